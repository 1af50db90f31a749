#!/usr/bin/env bash
# What snapshots and clones cost (docs/snapshots.md), on one node:
#   1. 4 KiB scattered writes at qd32 on a volume with 0, 1, 10 and 100
#      snapshots: the first run after the latest snapshot (it copies each
#      grain it touches once) and a second run (grains already copied);
#   2. time to take a snapshot while a writer runs, on a 1 GiB and a 100 GiB
#      volume (p50 / p99 / max of the CLI's wall time);
#   3. 4 KiB reads at qd1 on a volume with 1,000 snapshots against one with
#      none (mean latency);
#   4. space taken by 100 clones of a written 1 GiB template, each of which
#      then writes 1 MiB.
#
#   bash bench/snapshots.sh            # REPEAT=3 rounds of part 1, medians
#   bash bench/snapshots.sh --quick    # one round, short runs, 20 clones
#
# Environment: REPEAT, DURATION (part 1 makes DURATION * 30000 writes per
# run), BENCH_DIR, TANDEM_BIN (default: a release build of this checkout),
# OUT (default bench/results/<date>-<host>-snapshots.md).
#
# Every volume is filled whole in 64 KiB writes first (the fill that decides
# what a small write costs, see bench/fills.sh), with the same client
# (qemu-img bench) as every run.
set -euo pipefail
cd "$(dirname "$0")/.."
root=$PWD

bench="snapshots bench"
# shellcheck source=common.sh
. "$root/bench/common.sh"
bench_options "$@"
CLONES=$([ "$quick" = 1 ] && echo 20 || echo 100)

need qemu-img numfmt du
need_qemu_iscsi
tandem_binary
bench_work tandem-snapshots

tport=$(free_port); aport=$(free_port)
TANDEM_LOG=warn "$tandem" serve --data-dir "$work/tandem" --iscsi-listen "127.0.0.1:$tport" \
  --api-listen "127.0.0.1:$aport" >"$work/tandem.log" 2>&1 &
pids+=($!)
wait_port "$aport"
tcli() { TANDEM_API="127.0.0.1:$aport" TANDEM_DATA_DIR="$work/tandem" "$tandem" "$@"; }
url() { echo "iscsi://127.0.0.1:$tport/iqn.2026-11.io.tandem:$1/0"; }

STEP=1052672 # 1 MiB + 4 KiB, as bench/run.sh
qemu_secs() { # url count depth size step [-w]
  timeout 900 qemu-img bench -f raw -t none -c "$2" -d "$3" -s "$4" -S "$5" ${6:-} "$1" 2>&1 \
    | sed -n 's/Run completed in \([0-9.]*\) seconds./\1/p'
}
fill() { # url bytes
  qemu_secs "$1" $(( $2 / 65536 )) 8 65536 65536 -w >/dev/null
}
writes() { # url -> IOPS
  local n=$(( DURATION * 30000 ))
  awk -v n="$n" -v t="$(qemu_secs "$1" "$n" 32 4096 "$STEP" -w)" 'BEGIN{ if (t > 0) printf "%.0f", n/t; else print "nan" }'
}
now_ms() { echo $(( $(date +%s%N) / 1000000 )); }
pct() { # p < numbers
  tr ' ' '\n' | grep -v '^$' | sort -g | awk -v p="$1" '{a[NR]=$1} END{i=int((NR-1)*p/100+0.5)+1; if(i>NR)i=NR; print a[i]}'
}
ratio() { awk -v a="$1" -v b="$2" 'BEGIN{ if (b+0 == 0) print "-"; else printf "%.2f", a/b }'; }
GIB=$((1 << 30))

# 1. Writes against the number of snapshots.
declare -A iops
counts=(0 1 10 100)
for round in $(seq 1 "$REPEAT"); do
  echo "$bench: part 1, round $round of $REPEAT" >&2
  v="w$round"
  tcli volume create "$v" --size 1G >/dev/null
  fill "$(url "$v")" "$GIB"
  have=0
  for c in "${counts[@]}"; do
    while [ "$have" -lt "$c" ]; do
      have=$(( have + 1 ))
      tcli snapshot create "$v" --name "s$have" >/dev/null
    done
    first=$(writes "$(url "$v")"); again=$(writes "$(url "$v")")
    echo "$bench: $c snapshots: $first IOPS, then $again" >&2
    iops["$c|first"]+="$first "
    iops["$c|again"]+="$again "
  done
  tcli volume delete "$v" >/dev/null
done

# 2. Taking a snapshot while a writer runs, on 1 GiB and 100 GiB.
declare -A take
for size in 1G 100G; do
  echo "$bench: part 2, $size" >&2
  v="t-$(echo "$size" | tr 'A-Z' 'a-z')"
  tcli volume create "$v" --size "$size" >/dev/null
  fill "$(url "$v")" "$GIB"
  qemu-img bench -f raw -t none -c 100000000 -d 32 -s 4096 -S "$STEP" -w "$(url "$v")" >/dev/null 2>&1 &
  writer=$!
  sleep 1
  for i in $(seq 1 30); do
    t0=$(now_ms)
    tcli snapshot create "$v" --name "busy$i" >/dev/null
    take["$size"]+="$(( $(now_ms) - t0 )) "
    sleep 0.1
  done
  kill "$writer" 2>/dev/null || true
  wait "$writer" 2>/dev/null || true
  tcli volume delete --force "$v" >/dev/null
done

# 3. Reads on a volume with 1,000 snapshots against one with none.
echo "$bench: part 3" >&2
tcli volume create r0 --size 1G >/dev/null
tcli volume create r1000 --size 1G >/dev/null
fill "$(url r0)" "$GIB"
fill "$(url r1000)" "$GIB"
t0=$(now_ms)
for i in $(seq 1 1000); do tcli snapshot create r1000 --name "s$i" >/dev/null; done
thousand_ms=$(( $(now_ms) - t0 ))
reads=$(( DURATION * 4000 ))
declare -A lat
for round in $(seq 1 "$REPEAT"); do
  for v in r0 r1000; do
    s=$(qemu_secs "$(url "$v")" "$reads" 1 4096 "$STEP")
    lat["$v"]+="$(awk -v s="$s" -v n="$reads" 'BEGIN{printf "%.1f", s*1e6/n}') "
  done
done
tcli volume delete r1000 >/dev/null 2>&1 || true
tcli volume delete r0 >/dev/null

# 4. Clones of a written template.
echo "$bench: part 4, $CLONES clones" >&2
tcli volume create template --size 1G >/dev/null
fill "$(url template)" "$GIB"
tmpl_kib=$(du -sk "$work/tandem/volumes" | cut -f1)
t0=$(now_ms)
declare -a clone_ms
for i in $(seq 1 "$CLONES"); do
  c0=$(now_ms)
  tcli volume clone template "vm$i" >/dev/null
  clone_ms+=($(( $(now_ms) - c0 )))
done
for i in $(seq 1 "$CLONES"); do
  qemu_secs "$(url "vm$i")" 16 1 65536 $(( 64 << 20 )) -w >/dev/null
done
all_kib=$(du -sk "$work/tandem/volumes" | cut -f1)

out=${OUT:-"$root/bench/results/$(date +%F)-$(hostname -s)-snapshots.md"}
{
  echo "# Snapshots and clones, $(date +%F)"
  echo
  echo "\`bash bench/snapshots.sh$([ "$quick" = 1 ] && echo " --quick")\` (REPEAT=$REPEAT, DURATION=${DURATION}s); one node, 1 GiB volumes filled whole in 64 KiB writes first."
  echo
  echo "Machine: $(nproc) CPUs, $(free -g | awk '/Mem:/{print $2}') GiB RAM, kernel $(uname -r). Tandem: $("$tandem" --version 2>/dev/null || echo "?") ($tandem$( [ -z "$TANDEM_BIN_GIVEN" ] && echo ", built from $(git rev-parse --short HEAD 2>/dev/null)"))."
  echo
  echo "## 4 KiB scattered writes, qd32 (qemu-img bench, $(( DURATION * 30000 )) writes per run), medians of $REPEAT"
  echo
  echo "| snapshots | first run after the latest snapshot (IOPS) | vs none | second run (IOPS) | vs none |"
  echo "|---:|---:|---:|---:|---:|"
  f0=$(echo "${iops[0|first]}" | median); a0=$(echo "${iops[0|again]}" | median)
  for c in "${counts[@]}"; do
    f=$(echo "${iops[$c|first]}" | median); a=$(echo "${iops[$c|again]}" | median)
    echo "| $c | $f | $(ratio "$f" "$f0") | $a | $(ratio "$a" "$a0") |"
  done
  echo
  echo "## Taking a snapshot while a writer runs (qd32 4 KiB writes), 30 snapshots, CLI wall time in ms"
  echo
  echo "| volume | p50 | p99 | max |"
  echo "|---|---:|---:|---:|"
  for size in 1G 100G; do
    echo "| $size | $(echo "${take[$size]}" | pct 50) | $(echo "${take[$size]}" | pct 99) | $(echo "${take[$size]}" | pct 100) |"
  done
  echo
  echo "## 4 KiB scattered reads, qd1 ($reads reads per run), mean latency in µs, medians of $REPEAT"
  echo
  echo "| volume | latency | vs none |"
  echo "|---|---:|---:|"
  l0=$(echo "${lat[r0]}" | median); l1=$(echo "${lat[r1000]}" | median)
  echo "| no snapshots | $l0 | 1.00 |"
  echo "| 1,000 snapshots (taken in $(( thousand_ms / 1000 )) s, one CLI call each) | $l1 | $(ratio "$l1" "$l0") |"
  echo
  echo "## $CLONES clones of a written 1 GiB template, each writing 1 MiB"
  echo
  echo "| | |"
  echo "|---|---:|"
  echo "| template alone on disk | $(( tmpl_kib / 1024 )) MiB |"
  echo "| template + $CLONES clones, after their writes | $(( all_kib / 1024 )) MiB |"
  echo "| what the clones wrote | $CLONES MiB |"
  echo "| clone creation (CLI wall time) p50 / max | $(echo "${clone_ms[*]}" | pct 50) / $(echo "${clone_ms[*]}" | pct 100) ms |"
} >"$out"
echo "$bench: results in $out" >&2
cat "$out"
