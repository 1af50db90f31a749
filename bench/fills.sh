#!/usr/bin/env bash
# 4 KiB writes and reads on Tandem and tgtd side by side, after three ways of
# filling the LUN: none (fresh and sparse), whole in 64 KiB writes, whole in
# 1 MiB writes. How a LUN was filled decides what the page cache holds
# (folio sizes), and with it what a small write costs: a benchmark that only
# measures after a 1 MiB fill shows the kindest case.
#
#   bash bench/fills.sh            # REPEAT=3 rounds, order alternated, medians
#   bash bench/fills.sh --quick    # one round, short runs
#
# Environment: REPEAT, DURATION (seconds of iscsi-perf reads; writes make
# DURATION * 30000 requests), SIZE (LUN size, default 1G), BENCH_DIR,
# TANDEM_BIN (the binary to measure; default a release build of this
# checkout), OUT (where the table goes; default
# bench/results/<date>-<host>-fills.md).
#
# Every round gives each fill a new Tandem volume and a new tgtd LUN (a
# sparse file), fills both the same way with the same client, then measures
# 4 KiB scattered writes at qd32 (qemu-img bench, as bench/run.sh) and 4 KiB
# random reads at qd32 (iscsi-perf) on both, the target that goes first
# alternating.
set -euo pipefail
cd "$(dirname "$0")/.."
root=$PWD

bench="fills bench"
# shellcheck source=common.sh
. "$root/bench/common.sh"
bench_options "$@"
SIZE=${SIZE:-1G}

need iscsi-perf qemu-img tgtd tgtadm numfmt
need_qemu_iscsi
tandem_binary
bench_work tandem-fills

size_bytes=$(numfmt --from=iec "$SIZE")

tport=$(free_port); aport=$(free_port)
TANDEM_LOG=warn "$tandem" serve --data-dir "$work/tandem" --iscsi-listen "127.0.0.1:$tport" \
  --api-listen "127.0.0.1:$aport" >"$work/tandem.log" 2>&1 &
pids+=($!)
wait_port "$aport"
tcli() { TANDEM_API="127.0.0.1:$aport" TANDEM_DATA_DIR="$work/tandem" "$tandem" "$@" >/dev/null; }

gport=$(free_port); cport=$(( (RANDOM % 200) + 300 ))
tgtd -f -C "$cport" --iscsi "portal=127.0.0.1:$gport" >"$work/tgtd.log" 2>&1 &
pids+=($!)
wait_port "$gport"
tid=0

STEP=1052672 # 1 MiB + 4 KiB, as bench/run.sh
qemu_secs() { # url count depth size step [-w]
  timeout 600 qemu-img bench -f raw -t none -c "$2" -d "$3" -s "$4" -S "$5" ${6:-} "$1" 2>&1 \
    | sed -n 's/Run completed in \([0-9.]*\) seconds./\1/p'
}
fill() { # url piece
  [ "$2" = none ] && return 0
  local piece; piece=$(numfmt --from=iec "$2")
  qemu_secs "$1" $(( size_bytes / piece )) 8 "$piece" "$piece" -w >/dev/null
}
writes() { # url -> IOPS
  local n=$(( DURATION * 30000 ))
  awk -v n="$n" -v t="$(qemu_secs "$1" "$n" 32 4096 "$STEP" -w)" 'BEGIN{ if (t > 0) printf "%.0f", n/t; else print "nan" }'
}
reads() { # url -> IOPS
  timeout $(( DURATION + 20 )) iscsi-perf -r -m 32 -t "$DURATION" "$1" 2>&1 \
    | tr '\r' '\n' | grep -o 'iops average [0-9]*' | tail -1 | awk '{print $3}'
}

declare -A results
record() { results["$1|$2|$3"]+="$4 "; }
fills=(none 64K 1M)
for round in $(seq 1 "$REPEAT"); do
  echo "fills bench: round $round of $REPEAT" >&2
  for f in "${fills[@]}"; do
    name=$(echo "r${round}-${f}" | tr "A-Z" "a-z")
    tcli volume create "$name" --size "$SIZE"
    url_tandem="iscsi://127.0.0.1:$tport/iqn.2026-11.io.tandem:$name/0"
    tid=$(( tid + 1 ))
    truncate -s "$size_bytes" "$work/$name.img"
    tgtadm -C "$cport" --lld iscsi --mode target --op new --tid "$tid" --targetname "iqn.2001-04.org.debian:$name"
    tgtadm -C "$cport" --lld iscsi --mode logicalunit --op new --tid "$tid" --lun 1 --backing-store "$work/$name.img"
    tgtadm -C "$cport" --lld iscsi --mode target --op bind --tid "$tid" --initiator-address ALL
    url_tgtd="iscsi://127.0.0.1:$gport/iqn.2001-04.org.debian:$name/1"
    fill "$url_tandem" "$f"
    fill "$url_tgtd" "$f"
    if (( (round + ${#f}) % 2 )); then order="tandem tgtd"; else order="tgtd tandem"; fi
    for who in $order; do
      url_var="url_$who"
      record "$f" "$who" write "$(writes "${!url_var}")"
    done
    for who in $order; do
      url_var="url_$who"
      record "$f" "$who" read "$(reads "${!url_var}")"
    done
    tcli volume delete "$name"
    tgtadm -C "$cport" --lld iscsi --mode target --op delete --tid "$tid"
    rm -f "$work/$name.img"
  done
done

med() { echo "${results[$1|$2|$3]:-}" | median; }
ratio() { awk -v a="$1" -v b="$2" 'BEGIN{ if (b+0 == 0) print "-"; else printf "%.2f×", a/b }'; }
out=${OUT:-"$root/bench/results/$(date +%F)-$(hostname -s)-fills.md"}
{
  echo "# 4 KiB I/O after three fills, $(date +%F)"
  echo
  echo "\`bash bench/fills.sh\` (REPEAT=$REPEAT, DURATION=${DURATION}s, SIZE=$SIZE); medians of $REPEAT rounds, a new LUN per fill and round."
  echo
  echo "Machine: $(nproc) CPUs, $(free -g | awk '/Mem:/{print $2}') GiB RAM, kernel $(uname -r). Tandem: $("$tandem" --version 2>/dev/null || echo "?") ($tandem$( [ -z "$TANDEM_BIN_GIVEN" ] && echo ", built from $(git rev-parse --short HEAD 2>/dev/null)")); tgtd $(tgtd --version 2>/dev/null | head -1 || echo "?")."
  echo
  echo "| fill | 4 KiB scattered write qd32, Tandem (IOPS) | tgtd | Tandem / tgtd | 4 KiB random read qd32, Tandem (IOPS) | tgtd | Tandem / tgtd |"
  echo "|---|---:|---:|---:|---:|---:|---:|"
  for f in "${fills[@]}"; do
    label=$([ "$f" = none ] && echo "none (fresh, sparse)" || echo "whole LUN in $f writes")
    tw=$(med "$f" tandem write); gw=$(med "$f" tgtd write)
    tr_=$(med "$f" tandem read); gr=$(med "$f" tgtd read)
    echo "| $label | $tw | $gw | $(ratio "$tw" "$gw") | $tr_ | $gr | $(ratio "$tr_" "$gr") |"
  done
} | tee "$out"
echo "fills bench: written to $out" >&2
