#!/usr/bin/env bash
# Tandem and tgtd side by side, in one run, on this machine: same LUN size,
# same backing filesystem, same clients. Prints a markdown table with ratios
# and writes it to bench/results/<date>-<host>.md.
#
#   bash bench/run.sh            # REPEAT=3 rounds, A/B alternated, medians
#   bash bench/run.sh --quick    # one round, short runs (smoke test)
#
# Environment: REPEAT (rounds, default 3), DURATION (seconds per iscsi-perf
# run, default 5), SIZE (LUN size, default 1G), BENCH_DIR (where the backing
# files live, default a temp dir under /var/tmp).
#
# Clients: iscsi-perf (libiscsi) for random reads; qemu-img bench over
# iscsi:// for writes and sequential runs; bench/lat.py (libiscsi through
# ctypes) for queue-depth-1 latency with percentiles. References:
# fio on the raw backing file (page cache, the physical limit of this
# machine), and null backends (Tandem's null_target example, tgtd --bstype
# null) for the protocol path alone.
set -euo pipefail
cd "$(dirname "$0")/.."
root=$PWD

bench="bench"
# shellcheck source=common.sh
. "$root/bench/common.sh"
bench_options "$@"
SIZE=${SIZE:-1G}

for t in iscsi-perf qemu-img tgtd tgtadm fio; do
  command -v "$t" >/dev/null || { echo "bench: $t is missing; run scripts/install-test-deps.sh (and apt-get install fio)" >&2; exit 2; }
done
qemu-img --help | grep -q iscsi || { echo "bench: qemu-img cannot open iscsi:// (install qemu-block-extra)" >&2; exit 2; }

echo "bench: building Tandem (release)" >&2
cargo build --release -q -p tandem --bin tandem --example null_target
target_dir="${CARGO_TARGET_DIR:-$root/target}"
tandem="$target_dir/release/tandem"
null_target="$target_dir/release/examples/null_target"

work=$(mktemp -d "${BENCH_DIR:-/var/tmp}/tandem-bench.XXXXXX")
# shellcheck source=../scripts/servers.sh
. "$root/scripts/servers.sh"
cleanup() {
  stop_servers 2>/dev/null
  rm -rf "$work"
}
trap cleanup EXIT

bytes_of() { numfmt --from=iec "$1"; }
size_bytes=$(bytes_of "$SIZE")

# --- targets ------------------------------------------------------------------
tport=$(free_port); aport=$(free_port)
TANDEM_LOG=warn "$tandem" serve --data-dir "$work/tandem" --iscsi-listen "127.0.0.1:$tport" \
  --api-listen "127.0.0.1:$aport" >"$work/tandem.log" 2>&1 &
tandem_pid=$!; pids+=($tandem_pid)
wait_port "$aport"
TANDEM_API="127.0.0.1:$aport" TANDEM_DATA_DIR="$work/tandem" "$tandem" volume create bench --size "$SIZE" >/dev/null
url_tandem="iscsi://127.0.0.1:$tport/iqn.2026-11.io.tandem:bench/0"

nport=$(free_port)
"$null_target" "127.0.0.1:$nport" "$SIZE" >"$work/null.log" 2>&1 &
pids+=($!)
wait_port "$nport"
url_tandem_null="iscsi://127.0.0.1:$nport/iqn.2026-11.io.tandem:null/0"

gport=$(free_port); cport=$(( (RANDOM % 200) + 300 ))
truncate -s "$size_bytes" "$work/tgt.img"
tgtd -f -C "$cport" --iscsi "portal=127.0.0.1:$gport" >"$work/tgtd.log" 2>&1 &
tgtd_pid=$!; pids+=($tgtd_pid)
wait_port "$gport"
tgtadm -C "$cport" --lld iscsi --mode target --op new --tid 1 --targetname iqn.2001-04.org.debian:bench
tgtadm -C "$cport" --lld iscsi --mode logicalunit --op new --tid 1 --lun 1 --backing-store "$work/tgt.img"
tgtadm -C "$cport" --lld iscsi --mode target --op new --tid 2 --targetname iqn.2001-04.org.debian:null
null_ok=1
tgtadm -C "$cport" --lld iscsi --mode logicalunit --op new --tid 2 --lun 1 --bstype null \
  --backing-store "null-$size_bytes" >/dev/null 2>&1 || null_ok=0
tgtadm -C "$cport" --lld iscsi --mode target --op bind --tid 1 --initiator-address ALL
tgtadm -C "$cport" --lld iscsi --mode target --op bind --tid 2 --initiator-address ALL
url_tgtd="iscsi://127.0.0.1:$gport/iqn.2001-04.org.debian:bench/1"
url_tgtd_null="iscsi://127.0.0.1:$gport/iqn.2001-04.org.debian:null/1"

# --- measurements ---------------------------------------------------------------
# Each prints one number on stdout.
STEP=1052672 # 1 MiB + 4 KiB: successive requests land scattered over the LUN

perf_iops() { # url qd
  timeout $((DURATION + 20)) iscsi-perf -r -m "$2" -t "$DURATION" "$1" 2>&1 \
    | tr '\r' '\n' | grep -o 'iops average [0-9]*' | tail -1 | awk '{print $3}'
}
qemu_secs() { # url count depth size step [-w]
  timeout 300 qemu-img bench -f raw -t none -c "$2" -d "$3" -s "$4" -S "$5" ${6:-} "$1" 2>&1 \
    | sed -n 's/Run completed in \([0-9.]*\) seconds./\1/p'
}
qemu_rate() { # url count depth size step [-w] -> requests per second
  awk -v n="$2" -v t="$(qemu_secs "$@")" 'BEGIN{printf "%.0f", n/t}'
}
mib=$(( size_bytes / 1048576 ))
m_seqwrite() { qemu_rate "$1" "$mib" 8 1M 1M -w; }
m_seqread()  { qemu_rate "$1" "$mib" 8 1M 1M; }
m_randread1()  { perf_iops "$1" 1; }
m_randread32() { perf_iops "$1" 32; }
m_randwrite1()  { qemu_rate "$1" $(( DURATION * 4000 )) 1 4096 $STEP -w; }
m_randwrite32() { qemu_rate "$1" $(( DURATION * 30000 )) 32 4096 $STEP -w; }
# Random 4 KiB at queue depth 1, one command at a time through libiscsi
# (bench/lat.py): prints "mean p99" in µs.
lat() { python3 "$root/bench/lat.py" "$2" "$1" "$DURATION" "$size_bytes" 2>/dev/null | awk 'NF==4{print $2, $4}'; }
m_lat_read()  { lat "$1" read; }
m_lat_write() { lat "$1" write; }

# fio on the raw file: the same patterns without any protocol, from the page
# cache like the targets' (no invalidation before each job).
fio_raw() { # rw bs depth -> IOPS or MB/s or latency
  local rw=$1 bs=$2 depth=$3 what=$4
  # Buffered I/O never queues in the kernel, so depth > 1 means one job per
  # CPU (the most this machine can do), depth 1 means one job.
  local jobs=1
  (( depth > 1 )) && jobs=$(nproc)
  fio --name=raw --filename="$work/raw.img" --size="$size_bytes" --rw="$rw" --bs="$bs" \
    --ioengine=psync --numjobs="$jobs" --group_reporting --direct=0 --invalidate=0 --time_based \
    --runtime="$DURATION" --output-format=json 2>/dev/null | python3 -c "
import json,sys
j=json.load(sys.stdin)['jobs'][0]
side=j['read'] if j['read']['io_bytes'] else j['write']
what='$what'
if what=='iops': print(round(side['iops']))
elif what=='mbs': print(round(side['bw_bytes']/1048576))
elif what=='lat': print(round(side['clat_ns']['mean']/1000,1))
elif what=='p99': print(round(side['clat_ns']['percentile']['99.000000']/1000,1))
"
}

metrics=(seqwrite seqread randread1 randread32 randwrite1 randwrite32 lat_read lat_write)
declare -A label=(
  [seqwrite]="1 MiB sequential write, qd8 (MB/s)"
  [seqread]="1 MiB sequential read, qd8 (MB/s)"
  [randread1]="4 KiB random read, qd1 (IOPS)"
  [randread32]="4 KiB random read, qd32 (IOPS)"
  [randwrite1]="4 KiB scattered write, qd1 (IOPS)"
  [randwrite32]="4 KiB scattered write, qd32 (IOPS)"
  [lat_read]="4 KiB random read latency, qd1, mean (µs)"
  [lat_read_p99]="4 KiB random read latency, qd1, p99 (µs)"
  [lat_write]="4 KiB random write latency, qd1, mean (µs)"
  [lat_write_p99]="4 KiB random write latency, qd1, p99 (µs)"
)
rows=(seqwrite seqread randread1 randread32 randwrite1 randwrite32 lat_read lat_read_p99 lat_write lat_write_p99)
declare -A lower_is_better=([lat_read]=1 [lat_write]=1 [lat_read_p99]=1 [lat_write_p99]=1)
declare -A results

run_metric() { # key target url; a second number on the line is the key's p99
  local v p99
  read -r v p99 < <("m_$1" "$3" || true) || true
  [ -n "$v" ] || v=nan
  results[$1,$2]="${results[$1,$2]:-} $v"
  [ -z "$p99" ] || results[${1}_p99,$2]="${results[${1}_p99,$2]:-} $p99"
}

echo "bench: raw file reference (fio)" >&2
dd if=/dev/zero of="$work/raw.img" bs=1M count=$(( size_bytes / 1048576 )) status=none
raw_seqwrite=$(fio_raw write 1M 8 mbs); raw_seqread=$(fio_raw read 1M 8 mbs)
raw_randread1=$(fio_raw randread 4k 1 iops); raw_randread32=$(fio_raw randread 4k 32 iops)
raw_randwrite1=$(fio_raw randwrite 4k 1 iops); raw_randwrite32=$(fio_raw randwrite 4k 32 iops)
raw_lat_read=$(fio_raw randread 4k 1 lat); raw_lat_write=$(fio_raw randwrite 4k 1 lat)
raw_lat_read_p99=$(fio_raw randread 4k 1 p99); raw_lat_write_p99=$(fio_raw randwrite 4k 1 p99)
rm -f "$work/raw.img"

for round in $(seq 1 "$REPEAT"); do
  echo "bench: round $round of $REPEAT" >&2
  for m in "${metrics[@]}"; do
    # Alternate who goes first, so neither always runs on a warmer machine.
    if (( round % 2 )); then order="tandem tgtd"; else order="tgtd tandem"; fi
    for who in $order; do
      if [ "$who" = tandem ]; then run_metric "$m" tandem "$url_tandem"; run_metric "$m" tandem_null "$url_tandem_null"
      else run_metric "$m" tgtd "$url_tgtd"; [ $null_ok = 1 ] && run_metric "$m" tgtd_null "$url_tgtd_null"; fi
    done
  done
done

median() { tr ' ' '\n' | grep -v '^$' | grep -v nan | sort -g | awk '{a[NR]=$1} END{if(NR==0){print "n/a"} else if(NR%2){print a[(NR+1)/2]} else {printf "%.1f\n",(a[NR/2]+a[NR/2+1])/2}}'; }
ratio() { awk -v a="$1" -v b="$2" -v inv="$3" 'BEGIN{ if (a=="n/a"||b=="n/a"||a==0||b==0) {print "n/a"} else if (inv) {printf "%.2f×", b/a} else {printf "%.2f×", a/b} }'; }

rss_kb() { awk '/VmRSS/{print $2}' "/proc/$1/status" 2>/dev/null || echo 0; }
rss_tandem_idle=$(rss_kb "$tandem_pid"); rss_tgtd_idle=$(rss_kb "$tgtd_pid")

# Memory: 64 sessions at queue depth 32 at once, then 100 volumes.
echo "bench: memory with 64 sessions x qd32" >&2
sessions_rss() { # url pid
  for _ in $(seq 1 64); do
    timeout $((DURATION + 20)) iscsi-perf -r -m 32 -t "$DURATION" "$1" >/dev/null 2>&1 &
  done
  sleep 1
  local peak=0 r
  while pgrep -f "iscsi-perf -r -m 32 -t $DURATION" >/dev/null; do
    r=$(rss_kb "$2"); (( r > peak )) && peak=$r
    sleep 0.2
  done
  wait
  echo "$peak"
}
rss_tandem_64=$(sessions_rss "$url_tandem" "$tandem_pid")
rss_tgtd_64=$(sessions_rss "$url_tgtd" "$tgtd_pid")
echo "bench: memory with 100 volumes" >&2
for i in $(seq 1 100); do
  TANDEM_API="127.0.0.1:$aport" TANDEM_DATA_DIR="$work/tandem" "$tandem" volume create "v$i" --size "$SIZE" >/dev/null
done
rss_tandem_100=$(rss_kb "$tandem_pid")

# --- report ---------------------------------------------------------------------
host=$(hostname)
out="$root/bench/results/$(date +%Y-%m-%d)-$host.md"
mkdir -p "$root/bench/results"
{
  echo "# Tandem vs tgtd, $(date +%Y-%m-%d)"
  echo
  echo "\`bash bench/run.sh\` (REPEAT=$REPEAT, DURATION=${DURATION}s, SIZE=$SIZE); medians of $REPEAT alternated rounds."
  echo
  echo "Machine: $(nproc) CPUs ($(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | sed 's/^ //')), $(free -g | awk '/Mem:/{print $2}') GiB RAM, kernel $(uname -r), backing filesystem $(df -T "$work" | awk 'NR==2{print $2}') on $(df "$work" | awk 'NR==2{print $1}')."
  echo "Versions: Tandem $("$tandem" --version | awk '{print $2}'), tgtd $(dpkg-query -W -f='${Version}' tgt 2>/dev/null), libiscsi $(dpkg-query -W -f='${Version}' libiscsi-bin 2>/dev/null), qemu-img $(qemu-img --version | head -1 | awk '{print $3}'), fio $(fio --version)."
  echo
  echo "| measure | Tandem | tgtd | Tandem / tgtd | Tandem null | tgtd null | raw file (fio) |"
  echo "|---|---:|---:|---:|---:|---:|---:|"
  for m in "${rows[@]}"; do
    a=$(echo "${results[$m,tandem]:-}" | median); b=$(echo "${results[$m,tgtd]:-}" | median)
    an=$(echo "${results[$m,tandem_null]:-}" | median); bn=$(echo "${results[$m,tgtd_null]:-}" | median)
    raw_var="raw_$m"; raw=${!raw_var:-n/a}
    echo "| ${label[$m]} | $a | $b | $(ratio "$a" "$b" "${lower_is_better[$m]:-}") | $an | $bn | $raw |"
  done
  echo
  echo "Ratios are \"times better\" for Tandem (for latency: tgtd's time over Tandem's)."
  echo "Latency rows come from bench/lat.py (libiscsi's synchronous API, one command at a time at random offsets); they include that client's own overhead, the same for every target."
  [ $null_ok = 1 ] || echo "tgtd in this build has no null backing store; its null column is empty."
  echo
  echo "| memory (VmRSS) | Tandem | tgtd |"
  echo "|---|---:|---:|"
  echo "| idle, one LUN, after the runs | $((rss_tandem_idle / 1024)) MiB | $((rss_tgtd_idle / 1024)) MiB |"
  echo "| peak with 64 sessions × qd32 random reads | $((rss_tandem_64 / 1024)) MiB | $((rss_tgtd_64 / 1024)) MiB |"
  echo "| 100 more volumes of $SIZE | $((rss_tandem_100 / 1024)) MiB | – |"
} >"$out"
cat "$out"
echo "bench: written to ${out#$root/}" >&2
