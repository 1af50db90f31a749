#!/usr/bin/env bash
# I/O pause of a planned switchover (`volume move-primary`, what
# `node maintenance enter` does for every volume a node leads): runs the
# multi-process scenario e2e_move_primary ROUNDS times (default 3, six moves
# each: two data nodes and a witness on loopback, two initiators writing FUA
# through both nodes) and prints, over every move, the median and the
# largest of the longest write the initiators saw around a move (retries
# included) and of the pause the command reported (fence to the new
# primary serving). Release build, as failover.sh.
set -euo pipefail
cd "$(dirname "$0")/.."
ROUNDS="${1:-3}"
cargo build --release -q -p tandem --tests 2>/dev/null || true
seen=()
reported=()
for r in $(seq 1 "$ROUNDS"); do
    out=$(cargo test -q --release -p tandem --test e2e_move_primary -- --nocapture 2>&1) || {
        echo "round $r: the scenario failed" >&2
        printf '%s\n' "$out" | tail -20 >&2
        exit 1
    }
    lines=$(printf '%s\n' "$out" | sed -n 's/.*reported pause \([0-9.]*\) ms, longest write meanwhile \([0-9.]*\) ms.*/\1 \2/p')
    [ -n "$lines" ] || { echo "round $r: no move measured" >&2; exit 1; }
    while read -r rep longest; do
        reported+=("$rep")
        seen+=("$longest")
    done <<<"$lines"
    echo "round $r: $(printf '%s\n' "$lines" | awk '{printf "%s/%s ", $2, $1}')ms (longest write / reported, per move)"
done
stats() {
    printf '%s\n' "$@" | sort -n | awk '{a[NR]=$1} END {printf "median %.1f ms, min %.1f, max %.1f over %d moves", a[int((NR+1)/2)], a[1], a[NR], NR}'
}
echo "longest write at the initiators around a move: $(stats "${seen[@]}")"
echo "pause the command reported:                    $(stats "${reported[@]}")"
