#!/usr/bin/env bash
# Queue-depth-1 write latency of a mirrored volume whose nodes talk over a
# real link, beside a standalone node reached the same way: each node runs in
# a network namespace of its own, linked by veth to a bridge where the
# initiator and the witness run. A mirrored 4 KiB write should take a
# standalone write's time plus one round trip between the nodes plus the
# copy's own write, nothing more; the table gives all three.
#
#   bash bench/mirror-netns.sh            # REPEAT=3 rounds, setups alternated
#   bash bench/mirror-netns.sh --quick    # one short round
#
# Needs root, iproute2 and a kernel with veth and bridges. This machine has
# no `tc netem`, so the link adds no delay of its own: the round trip is
# measured and stated (`bench/rtt.py` between the two nodes' namespaces, a
# 4 KiB request and a short answer, as a replicated write), and the copy's
# part is read from the primary's `tandem_replica_round_trip_seconds`
# (from sending a request to reading its answer).
#
# Environment: REPEAT, DURATION (seconds per latency run), SIZE (volume
# size, default 1G), BUSY_POLL_US (given to the cluster's nodes, default
# 0), BENCH_DIR, TANDEM_BIN, OUT, as in bench/mirror.sh.
set -euo pipefail
cd "$(dirname "$0")/.."
root=$PWD

bench="mirror netns bench"
# shellcheck source=common.sh
. "$root/bench/common.sh"
bench_options "$@"
SIZE=${SIZE:-1G}
BUSY_POLL_US=${BUSY_POLL_US:-0}

need qemu-img python3 numfmt ip curl
need_qemu_iscsi
[ "$(id -u)" = 0 ] || { echo "$bench: needs root (network namespaces)" >&2; exit 2; }
tandem_binary
bench_work tandem-mirror-netns

size_bytes=$(numfmt --from=iec "$SIZE")
iqn=iqn.2026-11.io.tandem:bench

# --- the network: hosts 0 (a), 1 (b), 2 (standalone) -----------------------------
tag="tdb$(( $$ % 100000 ))"
net="10.$(( 100 + ($$ / 256) % 100 )).$(( $$ % 256 ))"
br="${tag}br"
gateway="$net.1"
host_ns() { echo "${tag}h$1"; }
host_addr() { echo "$net.$(( 11 + $1 ))"; }
netns_cleanup() {
  local i p
  for i in 0 1 2; do
    for p in $(ip netns pids "$(host_ns $i)" 2>/dev/null); do kill -9 "$p" 2>/dev/null || true; done
    ip netns del "$(host_ns $i)" 2>/dev/null || true
    ip link del "${tag}v$i" 2>/dev/null || true
  done
  ip link del "$br" 2>/dev/null || true
}
trap 'bench_cleanup; netns_cleanup' EXIT
ip link add "$br" type bridge
ip addr add "$gateway/24" dev "$br"
ip link set "$br" up
for i in 0 1 2; do
  ns=$(host_ns $i)
  ip netns add "$ns"
  ip link add "${tag}v$i" type veth peer name eth0 netns "$ns"
  ip link set "${tag}v$i" master "$br" up
  ip netns exec "$ns" ip addr add "$(host_addr $i)/24" dev eth0
  ip netns exec "$ns" ip link set eth0 up
  ip netns exec "$ns" ip link set lo up
done

# --- the nodes ------------------------------------------------------------------
# node NAME HOST ARGS...: a node in host HOST's namespace; sets pid_, addr_,
# port_ (iSCSI), api_ and metrics_ of NAME.
node() {
  local name=$1 host=$2 addr
  shift 2
  addr=$(host_addr "$host")
  printf -v "addr_$name" '%s' "$addr"
  printf -v "port_$name" '%s' "$(free_port)"
  printf -v "api_$name" '%s' "$(free_port)"
  printf -v "metrics_$name" '%s' "$(free_port)"
  local p="port_$name" a="api_$name" m="metrics_$name"
  TANDEM_LOG=warn ip netns exec "$(host_ns "$host")" "$tandem" serve --data-dir "$work/$name" \
    --iscsi-listen "$addr:${!p}" --api-listen "$addr:${!a}" --metrics-listen "$addr:${!m}" "$@" \
    >>"$work/$name.log" 2>&1 &
  pids+=($!)
  printf -v "pid_$name" '%s' "$!"
  wait_port "${!a}" "$addr" || { echo "$bench: node $name did not start; see $work/$name.log" >&2; exit 1; }
}
ncli() { local name=$1 a="api_$1" addr="addr_$1"; shift; TANDEM_API="${!addr}:${!a}" TANDEM_DATA_DIR="$work/$name" "$tandem" "$@"; }

node single 2
ncli single volume create bench --size "$SIZE" >/dev/null
seed="$(host_addr 0):$(free_port)"
node a 0 --cluster-listen "$seed" --repl-listen "$(host_addr 0):$(free_port)" \
  --advertise "$(host_addr 0)" --node-name a --busy-poll-us "$BUSY_POLL_US"
node b 1 --cluster-listen "$(host_addr 1):$(free_port)" --repl-listen "$(host_addr 1):$(free_port)" \
  --advertise "$(host_addr 1)" --node-name b --busy-poll-us "$BUSY_POLL_US"
token=$(ncli a cluster init | grep -o 'tandem-join:[^ ]*' | head -1)
ncli b cluster join "$seed" --token "$token" >/dev/null
TANDEM_LOG=warn "$tandem" witness --data-dir "$work/w" --listen "$gateway:$(free_port)" \
  --advertise "$gateway" --join "$seed" --token "$token" >"$work/w.log" 2>&1 &
pids+=($!)
ncli a volume create bench --size "$SIZE" --replicas 2 >/dev/null
primary=$(settled_primary ncli a)
other=$([ "$primary" = a ] && echo b || echo a)
url_of() { local p="port_$1" a="addr_$1"; echo "iscsi://${!a}:${!p}/$iqn/0"; }
host_of() { case $1 in a) echo 0 ;; b) echo 1 ;; *) echo 2 ;; esac; }

for n in single "$primary"; do
  qemu-img bench -f raw -t none -w -c $(( size_bytes / 65536 )) -d 8 -s 65536 -S 65536 "$(url_of "$n")" >/dev/null 2>&1
done

# --- measurements ----------------------------------------------------------------
declare -A results
record() { results["$1|$2"]+="$3 "; }
# round_trips NODE: the sum (seconds) and count of NODE's replication round trips so far.
round_trips() {
  local m="metrics_$1" a="addr_$1"
  curl -s "http://${!a}:${!m}/metrics" | awk '
    /^tandem_replica_round_trip_seconds_sum/ { s += $NF }
    /^tandem_replica_round_trip_seconds_count/ { c += $NF }
    END { printf "%s %s\n", s + 0, c + 0 }'
}
latency() { # who url -> records mean and p99
  local mean p99
  read -r mean p99 < <(python3 "$root/bench/lat.py" write "$2" "$DURATION" "$size_bytes" 2>/dev/null | awk 'NF==4{print $2, $4}')
  record "$1" mean "$mean"
  record "$1" p99 "$p99"
}
rtt_between() { # mode: a TCP round trip from the primary's namespace to the copy's
  local port mode=$1 server
  port=$(free_port)
  ip netns exec "$(host_ns "$(host_of "$other")")" python3 "$root/bench/rtt.py" serve "$(host_addr "$(host_of "$other")")" "$port" "$mode" &
  server=$!
  ip netns exec "$(host_ns "$(host_of "$primary")")" python3 "$root/bench/rtt.py" 20000 "$mode" "$(host_addr "$(host_of "$other")"):$port"
  wait "$server" 2>/dev/null || true
}

for round in $(seq 1 "$REPEAT"); do
  echo "$bench: round $round of $REPEAT" >&2
  order=(single primary)
  [ $(( round % 2 )) = 0 ] && order=(primary single)
  for who in "${order[@]}"; do
    if [ "$who" = single ]; then
      latency single "$(url_of single)"
    else
      read -r s0 c0 < <(round_trips "$primary")
      latency primary "$(url_of "$primary")"
      read -r s1 c1 < <(round_trips "$primary")
      record primary trip "$(awk -v s="$s0" -v t="$s1" -v c="$c0" -v d="$c1" 'BEGIN{ if (d - c > 0) printf "%.1f", (t - s) / (d - c) * 1e6; else print "nan" }')"
    fi
  done
  record rtt sleep "$(rtt_between sleep)"
  record rtt poll "$(rtt_between poll)"
done

med() { echo "${results[$1|$2]:-}" | median; }
out=${OUT:-"$root/bench/results/$(date +%F)-$(hostname -s)-mirror-netns.md"}
s=$(med single mean); p=$(med primary mean); trip=$(med primary trip); rs=$(med rtt sleep); rp=$(med rtt poll)
{
  echo "# Mirrored writes over a namespace link, $(date +%F)"
  echo
  echo "\`bash bench/mirror-netns.sh\` (REPEAT=$REPEAT, DURATION=${DURATION}s, SIZE=$SIZE, BUSY_POLL_US=$BUSY_POLL_US); medians of $REPEAT rounds, the two setups alternately."
  echo
  echo "Machine: $(nproc) CPUs, $(free -g | awk '/Mem:/{print $2}') GiB RAM, kernel $(uname -r). Tandem: $("$tandem" --version 2>/dev/null || echo "?") ($tandem$( [ -z "$TANDEM_BIN_GIVEN" ] && echo ", built from $(git rev-parse --short HEAD 2>/dev/null)"))."
  echo
  echo "Each node in a network namespace of its own, on veth links to a bridge where the initiator (\`bench/lat.py\`, 4 KiB writes one at a time at random offsets) and the witness run; no delay added (no \`tc netem\` here)."
  echo
  echo "| measure | µs |"
  echo "|---|---:|"
  echo "| 4 KiB write, qd1, mean: standalone node | $s |"
  echo "| the same, through the mirrored volume's primary | $p |"
  echo "| difference | $(awk -v a="$p" -v b="$s" 'BEGIN{printf "%.1f", a-b}') |"
  echo "| the primary's replication round trip, mean (request sent to answer read) | $trip |"
  echo "| TCP round trip between the nodes' namespaces, both sleeping between messages | $rs |"
  echo "| the same, both polling | $rp |"
  # With busy polling the nodes poll for requests and answers: the
  # polling round trip is the one to take away.
  if [ "$BUSY_POLL_US" -gt 0 ]; then base=$rp; which=polling; else base=$rs; which=sleeping; fi
  echo "| the replication round trip beyond the $which TCP round trip: the copy's write and its handling | $(awk -v a="$trip" -v b="$base" 'BEGIN{printf "%.1f", a-b}') |"
  echo "| 4 KiB write, qd1, p99: standalone / primary | $(med single p99) / $(med primary p99) |"
  echo
  echo "A mirrored write should take at most the standalone write's time plus the replication round trip (one network round trip and the copy's write): the primary sends the request before its own write starts, so the two writes overlap and the difference can be smaller than the round trip."
  if [ "$BUSY_POLL_US" -gt 0 ]; then
    echo
    echo "With busy polling (\`--busy-poll-us $BUSY_POLL_US\`) the cluster's nodes poll and the standalone node, measured in the same rounds, does not: a node that polls keeps its CPU awake, and on a virtual machine waking a halted CPU can be most of a round trip (compare the sleeping and polling TCP round trips above)."
  fi
} | tee "$out"
echo "$bench: written to $out" >&2
