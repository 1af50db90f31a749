#!/usr/bin/env bash
# Runs every fuzz target for a bounded time (default 60 s each) with
# cargo-fuzz, starting from the corpus kept in fuzz/corpus/<target>, which
# grows with what the run finds. Crashes land in fuzz/artifacts/<target>.
#
#   bash scripts/fuzz.sh [SECONDS_PER_TARGET] [TARGET...]
#
# Needs a nightly toolchain and cargo-fuzz (cargo install cargo-fuzz).
# Not part of CI: a soak, not a test.
set -euo pipefail
cd "$(dirname "$0")/.."

secs="${1:-60}"
shift || true
if ! cargo +nightly --version >/dev/null 2>&1; then
  echo "fuzz: a nightly toolchain is needed (rustup toolchain install nightly)" >&2
  exit 2
fi
if ! cargo fuzz --version >/dev/null 2>&1; then
  echo "fuzz: cargo-fuzz is needed (cargo install cargo-fuzz)" >&2
  exit 2
fi
targets=("$@")
if [ ${#targets[@]} -eq 0 ]; then
  mapfile -t targets < <(cargo +nightly fuzz list)
fi
failed=0
for t in "${targets[@]}"; do
  mkdir -p "fuzz/corpus/$t"
  echo "fuzz: $t for ${secs}s"
  if ! cargo +nightly fuzz run "$t" "fuzz/corpus/$t" -- \
      -max_total_time="$secs" -rss_limit_mb=2048 -max_len=65536 -print_final_stats=1 \
      2>"fuzz/$t.log"; then
    echo "fuzz: $t FAILED; see fuzz/$t.log and fuzz/artifacts/$t/" >&2
    tail -30 "fuzz/$t.log" >&2
    failed=1
  else
    grep -E "stat::number_of_executed_units|cov:" "fuzz/$t.log" | tail -2
  fi
done
exit "$failed"
