#!/usr/bin/env bash
# I/O pause when the primary of a two-node cluster (+ witness) is killed
# with SIGKILL: runs the multi-process failover scenario ROUNDS times
# (default 5) and prints each pause and the median. The pause is measured
# from the kill to the first write acknowledged by the surviving node,
# through a real iSCSI session that retries like an initiator does.
# The killed node is also the Raft leader (the worst case: an election
# happens before the promotion).
set -euo pipefail
cd "$(dirname "$0")/.."
ROUNDS="${1:-5}"
cargo build --release -q -p tandem --tests 2>/dev/null || true
pauses=()
for r in $(seq 1 "$ROUNDS"); do
    p=$(cargo test -q --release -p tandem --test e2e_cluster -- --nocapture 2>&1 |
        sed -n 's/.*I\/O pause after SIGKILL of the primary: \([0-9.]*\)s.*/\1/p')
    [ -n "$p" ] || { echo "round $r: the scenario failed" >&2; exit 1; }
    echo "round $r: ${p} s"
    pauses+=("$p")
done
printf '%s\n' "${pauses[@]}" | sort -n | awk '{a[NR]=$1} END {printf "median I/O pause: %.2f s over %d rounds (min %.2f, max %.2f)\n", a[int((NR+1)/2)], NR, a[1], a[NR]}'
