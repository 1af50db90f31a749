#!/usr/bin/env bash
# What metrics cost: 4 KiB scattered writes at qd32 (the 4 KiB write qd32
# row of bench/run.sh) on one node, side by side in one run, with nobody
# scraping /metrics and with a scraper fetching it every second. The
# counting itself (atomics in each logical unit) always runs; a scrape
# reads them and the node's state.
#
#   bash bench/metrics.sh            # REPEAT=5 rounds, medians
#   bash bench/metrics.sh --quick    # one round, short runs
#
# Environment: REPEAT, DURATION (DURATION * 30000 writes per run),
# BENCH_DIR, TANDEM_BIN (default: a release build of this checkout), OUT
# (default bench/results/<date>-<host>-metrics.md).
#
# Rounds alternate which case goes first. The volume is filled whole in
# 64 KiB writes first, as every other write benchmark here does.
set -euo pipefail
cd "$(dirname "$0")/.."
root=$PWD

bench="metrics bench"
# shellcheck source=common.sh
. "$root/bench/common.sh"
REPEAT=${REPEAT:-$([ "${1:-}" = "--quick" ] && echo 1 || echo 5)}
bench_options "$@"

need qemu-img curl
load_before=$(cut -d' ' -f1-3 /proc/loadavg)
need_qemu_iscsi
tandem_binary
bench_work tandem-metrics

tport=$(free_port); aport=$(free_port); mport=$(free_port)
TANDEM_LOG=warn "$tandem" serve --data-dir "$work/tandem" --iscsi-listen "127.0.0.1:$tport" \
  --api-listen "127.0.0.1:$aport" --metrics-listen "127.0.0.1:$mport" >"$work/tandem.log" 2>&1 &
pids+=($!)
wait_port "$aport"
# The listeners are bound before the data directory is made: wait for the token.
for _ in $(seq 1 100); do [ -s "$work/tandem/api.token" ] && break; sleep 0.1; done
tcli() { TANDEM_API="127.0.0.1:$aport" TANDEM_DATA_DIR="$work/tandem" "$tandem" "$@"; }
url="iscsi://127.0.0.1:$tport/iqn.2026-11.io.tandem:m/0"

STEP=1052672 # 1 MiB + 4 KiB, as bench/run.sh
qemu_secs() { # count depth size step [-w]
  timeout 900 qemu-img bench -f raw -t none -c "$1" -d "$2" -s "$3" -S "$4" ${5:-} "$url" 2>&1 \
    | sed -n 's/Run completed in \([0-9.]*\) seconds./\1/p'
}
writes() { # -> IOPS
  local n=$(( DURATION * 30000 ))
  awk -v n="$n" -v t="$(qemu_secs "$n" 32 4096 "$STEP" -w)" 'BEGIN{ if (t > 0) printf "%.0f", n/t; else print "nan" }'
}
ratio() { awk -v a="$1" -v b="$2" 'BEGIN{ if (b+0 == 0) print "-"; else printf "%.3f", a/b }'; }

tcli volume create m --size 1G >/dev/null
qemu_secs $(( (1 << 30) / 65536 )) 8 65536 65536 -w >/dev/null

scraped() { # runs a write measurement while /metrics is fetched every second
  local stop="$work/stop-scraping"
  rm -f "$stop"
  (
    n=0
    while [ ! -e "$stop" ]; do
      curl -sf "http://127.0.0.1:$mport/metrics" >/dev/null && n=$((n + 1))
      sleep 1
    done
    echo "$n" >>"$work/scrapes"
  ) &
  local scraper=$!
  writes
  touch "$stop"
  wait "$scraper"
}

declare -A iops
for round in $(seq 1 "$REPEAT"); do
  echo "$bench: round $round of $REPEAT" >&2
  if [ $(( round % 2 )) = 1 ]; then
    iops[off]+="$(writes) "
    iops[on]+="$(scraped) "
  else
    iops[on]+="$(scraped) "
    iops[off]+="$(writes) "
  fi
done
scrapes=$(awk '{s += $1} END {print s + 0}' "$work/scrapes")
sample=$(curl -sf "http://127.0.0.1:$mport/metrics")
written=$(echo "$sample" | awk '$1 == "tandem_volume_writes_total{volume=\"m\"}" {print $2}')

off=$(echo "${iops[off]}" | median); on=$(echo "${iops[on]}" | median)
# Each round's two runs are next to each other in time: their ratio leaves
# out most of a shared machine's drift between rounds.
read -r -a offs <<<"${iops[off]}"; read -r -a ons <<<"${iops[on]}"
paired=""
for k in "${!offs[@]}"; do paired+="$(ratio "${ons[$k]}" "${offs[$k]}") "; done
out=${OUT:-"$root/bench/results/$(date +%F)-$(hostname -s)-metrics.md"}
{
  echo "# Metrics cost, $(date +%F)"
  echo
  echo "\`bash bench/metrics.sh$([ "$quick" = 1 ] && echo " --quick")\` (REPEAT=$REPEAT, DURATION=${DURATION}s); one node, a 1 GiB volume filled whole in 64 KiB writes first."
  echo
  echo "Machine: $(nproc) CPUs, $(free -g | awk '/Mem:/{print $2}') GiB RAM, kernel $(uname -r), load average $load_before before the run and $(cut -d' ' -f1-3 /proc/loadavg) after. Tandem: $("$tandem" --version 2>/dev/null || echo "?") ($tandem$( [ -z "$TANDEM_BIN_GIVEN" ] && echo ", built from $(git rev-parse --short HEAD 2>/dev/null)"))."
  echo
  echo "## 4 KiB scattered writes, qd32 (qemu-img bench, $(( DURATION * 30000 )) writes per run)"
  echo
  echo "| | median IOPS | every run (IOPS) | vs not scraped |"
  echo "|---|---:|---|---:|"
  echo "| not scraped | $off | ${iops[off]% } | 1.000 |"
  echo "| /metrics fetched every second | $on | ${iops[on]% } | $(ratio "$on" "$off") |"
  echo
  echo "Scraped / not scraped, round by round: ${paired% } (median $(echo "$paired" | median))."
  echo
  echo "$scrapes scrapes answered during the scraped runs; the node counted ${written:-?} writes to the volume (tandem_volume_writes_total, the fill included)."
} >"$out"
echo "$bench: results in $out" >&2
cat "$out"
