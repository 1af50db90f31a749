#!/usr/bin/env bash
# Mirrored writes side by side with a single node, in one run, on this
# machine: a standalone `tandem serve`, and a cluster of two data nodes and a
# witness on loopback with a volume mirrored on both, written through its
# primary and through the other node (forwarded). Same volume size, same
# fill, same clients. A second cluster, alike but with busy polling on
# (`--busy-poll-us`, BUSY_POLL_US µs, default 300), is written through its
# primary too ("polled"). Prints a markdown table with ratios to the
# standalone node and writes it to bench/results/<date>-<host>-mirror.md.
#
#   bash bench/mirror.sh            # REPEAT=3 rounds, targets rotated, medians
#   bash bench/mirror.sh --quick    # one round, short runs (smoke test)
#
# Environment: REPEAT (rounds, default 3), DURATION (seconds per run, default
# 5), SIZE (volume size, default 1G), BENCH_DIR (where the data directories
# live, default a temp dir under /var/tmp), TANDEM_BIN (the binary to measure,
# default a release build of this checkout: point it at another build to
# compare two versions on the same machine), OUT (where the table goes).
#
# CPU per write is the CPU time every Tandem process of the setup spent
# during the 4 KiB run (from /proc/<pid>/stat), over the writes it made; the
# initiator's own CPU is not counted.
set -euo pipefail
cd "$(dirname "$0")/.."
root=$PWD

bench="mirror bench"
# shellcheck source=common.sh
. "$root/bench/common.sh"
bench_options "$@"
SIZE=${SIZE:-1G}
BUSY_POLL_US=${BUSY_POLL_US:-300}

need qemu-img python3 numfmt
need_qemu_iscsi
tandem_binary
bench_work tandem-mirror

size_bytes=$(numfmt --from=iec "$SIZE")
iqn=iqn.2026-11.io.tandem:bench

# --- the setups ----------------------------------------------------------------
standalone_node

cluster_node a
cluster_node b
form_cluster a b
cli a volume create bench --size "$SIZE" --replicas 2 >/dev/null
# The cluster with busy polling: nodes c and d, witness wp.
cluster_node c --busy-poll-us "$BUSY_POLL_US"
cluster_node d --busy-poll-us "$BUSY_POLL_US"
form_cluster c d wp
cli c volume create bench --size "$SIZE" --replicas 2 >/dev/null

primary=$(settled_primary cli a)
other=$([ "$primary" = a ] && echo b || echo a)
url_of() { local p="port_$1"; echo "iscsi://127.0.0.1:${!p}/$iqn/0"; }
url_single=$(url_of single)
url_primary=$(url_of "$primary")
url_forwarded=$(url_of "$other")
url_polled=$(url_of "$(settled_primary cli c)")

# --- measurements ----------------------------------------------------------------
STEP=1052672 # 1 MiB + 4 KiB: successive requests land scattered over the LUN
qemu_secs() { # url count depth size step
  timeout 600 qemu-img bench -f raw -t none -w -c "$2" -d "$3" -s "$4" -S "$5" "$1" 2>&1 \
    | sed -n 's/Run completed in \([0-9.]*\) seconds./\1/p'
}
# CPU ticks every Tandem process of the setup has used so far.
setup_pids() {
  case $1 in
    single) echo "$pid_single" ;;
    polled) echo "$pid_c $pid_d" ;;
    *) echo "$pid_a $pid_b" ;;
  esac
}
ticks() { local t=0; for p in $(setup_pids "$1"); do t=$(( t + $(awk '{print $14 + $15}' /proc/"$p"/stat) )); done; echo $t; }
hz=$(getconf CLK_TCK)

# Fill each volume once with 64 KiB writes, as a used volume would be.
mib=$(( size_bytes / 1048576 ))
for u in "$url_single" "$url_primary" "$url_polled"; do
  qemu_secs "$u" $(( size_bytes / 65536 )) 8 65536 65536 >/dev/null
done

declare -A results
record() { results["$1|$2"]+="$3 "; }
median() { tr ' ' '\n' | grep -v '^$' | sort -g | awk '{a[NR]=$1} END{if(NR==0){print "-"}else{print (NR%2)?a[(NR+1)/2]:(a[NR/2]+a[NR/2+1])/2}}'; }

measure() { # who url
  local who=$1 url=$2 n t0 t1 secs
  n=$(( DURATION * 10000 ))
  t0=$(ticks "$who")
  secs=$(qemu_secs "$url" "$n" 32 4096 "$STEP")
  t1=$(ticks "$who")
  record "$who" iops "$(awk -v n="$n" -v t="$secs" 'BEGIN{printf "%.0f", n/t}')"
  record "$who" cpu "$(awk -v d=$(( t1 - t0 )) -v hz="$hz" -v n="$n" 'BEGIN{printf "%.1f", d/hz*1e6/n}')"
  secs=$(qemu_secs "$url" "$mib" 8 1M 1M)
  record "$who" seq "$(awk -v n="$mib" -v t="$secs" 'BEGIN{printf "%.0f", n*1.048576/t}')"
  read -r mean p99 < <(python3 "$root/bench/lat.py" write "$url" "$DURATION" "$size_bytes" 2>/dev/null | awk 'NF==4{print $2, $4}')
  record "$who" lat "$mean"
  record "$who" p99 "$p99"
}

whos=(single primary forwarded polled)
for round in $(seq 1 "$REPEAT"); do
  echo "mirror bench: round $round of $REPEAT" >&2
  # Rotate the order so no setup always runs first.
  for i in 0 1 2 3; do
    who=${whos[$(( (i + round) % 4 ))]}
    url_var="url_$who"
    measure "$who" "${!url_var}"
  done
  record rtt sleep "$(python3 "$root/bench/rtt.py" 20000 sleep)"
  record rtt poll "$(python3 "$root/bench/rtt.py" 20000 poll)"
done

med() { echo "${results[$1|$2]:-}" | median; }
ratio() { awk -v a="$1" -v b="$2" 'BEGIN{ if (b+0 == 0) print "-"; else printf "%.2f", a/b }'; }
out=${OUT:-"$root/bench/results/$(date +%F)-$(hostname -s)-mirror.md"}
{
  echo "# Mirrored writes, $(date +%F)"
  echo
  echo "\`bash bench/mirror.sh\` (REPEAT=$REPEAT, DURATION=${DURATION}s, SIZE=$SIZE); medians of $REPEAT rounds, setups rotated."
  echo
  echo "Machine: $(nproc) CPUs, $(free -g | awk '/Mem:/{print $2}') GiB RAM, kernel $(uname -r). Tandem: $("$tandem" --version 2>/dev/null || echo "?") ($tandem$( [ -z "$TANDEM_BIN_GIVEN" ] && echo ", built from $(git rev-parse --short HEAD 2>/dev/null)"))."
  echo
  echo "| measure | standalone | primary | forwarded | primary, polled | primary / standalone | forwarded / primary | polled / standalone |"
  echo "|---|---:|---:|---:|---:|---:|---:|---:|"
  for row in "iops|4 KiB scattered write, qd32 (IOPS)" "cpu|CPU per 4 KiB write, all nodes (µs)" \
             "seq|1 MiB sequential write, qd8 (MB/s)" "lat|4 KiB write latency, qd1, mean (µs)" \
             "p99|4 KiB write latency, qd1, p99 (µs)"; do
    key=${row%%|*}; label=${row#*|}
    s=$(med single "$key"); p=$(med primary "$key"); f=$(med forwarded "$key"); q=$(med polled "$key")
    echo "| $label | $s | $p | $f | $q | $(ratio "$p" "$s") | $(ratio "$f" "$p") | $(ratio "$q" "$s") |"
  done
  echo
  echo "Ratios are plain quotients (for latency and CPU, lower is better). \"primary, polled\": the second cluster, started with \`--busy-poll-us $BUSY_POLL_US\`."
  echo
  echo "A loopback TCP round trip between two processes (\`bench/rtt.py\`, a 4 KiB request and a 48-byte answer, medians of the rounds' means): $(med rtt sleep) µs when both sleep between messages, $(med rtt poll) µs when both poll. A mirrored write at queue depth 1 waits for one such round trip beyond a standalone write, and for the copy's own write."
} | tee "$out"
echo "mirror bench: written to $out" >&2
