#!/usr/bin/env bash
# Soak test, opt-in (not part of scripts/test.sh or CI): runs the nemesis
# scenario (crates/tandem/tests/e2e_nemesis.rs: random kills, pauses, clean
# restarts and cut links of the data nodes and the witness under writes) over
# and over, each run with a new seed, until one fails or the time is up.
# Needs root (network namespaces, as the test itself).
#
#   bash scripts/soak.sh [HOURS] [SCHEDULES_PER_RUN]    # defaults: 8 hours, 100
#
# Each run's output goes to $TANDEM_SOAK_DIR (default soak-logs/); a run
# that passes leaves one line in soak-logs/summary.log and its output is
# removed. The first failure stops the soak and keeps its output, which
# ends with the seed, every schedule, and where the servers' logs were kept.
# Replay it with
#   TANDEM_NEMESIS_SEED=<seed> TANDEM_NEMESIS_SCHEDULES=<n> \
#     cargo test -p tandem --test e2e_nemesis -- --nocapture
set -euo pipefail
cd "$(dirname "$0")/.."

hours="${1:-8}"
per_run="${2:-100}"
logs="${TANDEM_SOAK_DIR:-soak-logs}"
mkdir -p "$logs"

# Built once; every run below reuses the binary.
cargo test -p tandem --test e2e_nemesis --no-run

runs=0
trap 'echo "stopped after $runs passing runs ($((runs * per_run)) schedules)"; exit 130' INT TERM
deadline=$(( $(date +%s) + $(awk "BEGIN { printf \"%d\", $hours * 3600 }") ))
while [ "$(date +%s)" -lt "$deadline" ]; do
    seed=$(od -An -N6 -tu8 /dev/urandom | tr -d ' ')
    out="$logs/$(date -u +%Y%m%dT%H%M%SZ)-seed-$seed.log"
    echo "run $((runs + 1)): seed $seed, $per_run schedules -> $out"
    if TANDEM_NEMESIS_SEED="$seed" TANDEM_NEMESIS_SCHEDULES="$per_run" \
        cargo test -p tandem --test e2e_nemesis -- --nocapture >"$out" 2>&1; then
        runs=$((runs + 1))
        echo "$(date -u +%FT%TZ) seed $seed: $per_run schedules passed" >>"$logs/summary.log"
        rm -f "$out"
    else
        echo "$(date -u +%FT%TZ) seed $seed: FAILED, see $out" >>"$logs/summary.log"
        echo "FAILED after $runs passing runs ($((runs * per_run)) schedules): seed $seed"
        grep -E "panicked at|nemesis failed|schedule [0-9]+:|logs kept" "$out" || true
        echo "full output: $out"
        exit 1
    fi
done
echo "soak passed: $runs runs, $((runs * per_run)) schedules in $hours hours"
