#!/usr/bin/env bash
# How fast a returning node is resynced, and what the resync costs a client
# writing at the same time, on this machine: a cluster of two data nodes and
# a witness as processes on loopback. Three measurements:
#
#  1. catch-up: the node that is not primary is stopped, 1 GiB is written
#     through the primary (1 MiB writes, qd8, the whole volume), the node
#     returns; the resync's own time and rate come from the primary's log
#     ("replica in sync ... bytes= data= unmapped= ms="), the wall time is
#     from the restart until the control plane records the copy in sync.
#  2. client under resync: 4 KiB scattered writes at qd32 (`qemu-img bench`)
#     through the primary with both copies in sync, then the same started
#     the moment the primary logs that a resync of the whole volume starts
#     (the node away and back as in 1); the primary's status is sampled once
#     a second during both runs (resync rate, limit, whether it yields).
#  3. full sync: a 10 GiB volume with one copy holding 1 GiB (1 MiB every
#     10 MiB), a copy added on the other node: bytes sent as data and
#     unmapped, and the time until it is in sync.
#
# Prints a markdown report and writes it to
# bench/results/<date>-<host>-resync.md.
#
#   bash bench/resync-speed.sh            # REPEAT=3 rounds of 1 and 2, medians
#   bash bench/resync-speed.sh --quick    # one round, smaller volumes
#
# Environment: REPEAT (rounds, default 3), DURATION (seconds of client writes
# per run, roughly, default 5), DIRTY (bytes the returning node misses,
# default 1G), FULL (size of the volume of measurement 3, default 10G),
# BENCH_DIR (where the data directories live, default a temp dir under
# /var/tmp; KEEP=1 keeps it, with the nodes' logs), TANDEM_BIN (the binary to measure, default a release build of
# this checkout), OUT (where the table goes).
set -euo pipefail
cd "$(dirname "$0")/.."
root=$PWD

bench="resync bench"
# shellcheck source=common.sh
. "$root/bench/common.sh"
bench_options "$@"
DIRTY=${DIRTY:-$([ $quick = 1 ] && echo 256M || echo 1G)}
FULL=${FULL:-$([ $quick = 1 ] && echo 2G || echo 10G)}

need qemu-img python3 numfmt
# The interpreter itself, not a version manager's shim: the bench calls it
# often, and a shim costs CPU the nodes would otherwise have.
PY=$(python3 -c 'import sys; print(sys.executable)')
need_qemu_iscsi
tandem_binary
bench_work tandem-resync

dirty_bytes=$(numfmt --from=iec "$DIRTY")
full_bytes=$(numfmt --from=iec "$FULL")
dirty_mib=$(( dirty_bytes / 1048576 ))
prefix=iqn.2026-11.io.tandem
LOAD_BEFORE=$(cut -d' ' -f1-3 /proc/loadavg)

# --- the cluster ------------------------------------------------------------------
# start NAME: starts data node NAME with the arguments saved in args_NAME (the
# first time: new ports); sets pid_NAME, port_NAME, api_NAME, cluster_NAME.
start() {
  local name=$1 v="args_$1"
  if [ -z "${!v:-}" ]; then
    local port api clu
    port=$(free_port); api=$(free_port); clu="127.0.0.1:$(free_port)"
    printf -v "port_$name" '%s' "$port"
    printf -v "api_$name" '%s' "$api"
    printf -v "cluster_$name" '%s' "$clu"
    printf -v "args_$name" '%s' "--data-dir $work/$name --iscsi-listen 127.0.0.1:$port --api-listen 127.0.0.1:$api \
--cluster-listen $clu --repl-listen 127.0.0.1:$(free_port) --advertise 127.0.0.1 --node-name $name"
  fi
  # shellcheck disable=SC2086
  TANDEM_LOG=info "$tandem" serve ${!v} >>"$work/$name.log" 2>&1 &
  pids+=($!)
  printf -v "pid_$name" '%s' "$!"
  local a="api_$name"
  wait_port "${!a}"
}
# stop NAME: stops node NAME, waits for it to exit, and forgets its pid (so
# the cleanup never signals a process that has taken the number since).
stop() {
  local p="pid_$1" left=() q
  kill "${!p}"
  for _ in $(seq 1 100); do kill -0 "${!p}" 2>/dev/null || break; sleep 0.1; done
  kill -9 "${!p}" 2>/dev/null || true
  wait "${!p}" 2>/dev/null || true
  for q in "${pids[@]}"; do [ "$q" = "${!p}" ] || left+=("$q"); done
  pids=("${left[@]}")
}

start a
start b
form_cluster a b

# in_sync NAME VOLUME -> prints the name of the volume's primary once node
# NAME sees every copy of it recorded in sync; fails after 10 minutes.
in_sync() {
  for _ in $(seq 1 6000); do
    local who
    who=$(cli "$1" cluster status --json 2>/dev/null | "$PY" -c '
import json, sys
view = json.load(sys.stdin)
s, vol = view["status"], sys.argv[1]
v = s["state"]["volumes"].get(vol)
if v and all(r["state"] == "in-sync" for r in v["replicas"].values()):
    print(s["state"]["nodes"][str(v["primary"])]["name"])
' "$2" 2>/dev/null || true)
    if [ -n "$who" ]; then echo "$who"; return 0; fi
    sleep 0.1
  done
  echo "resync bench: volume $2 did not get in sync; logs in $work" >&2
  return 1
}
# last_sync NAME NODE_ID -> "bytes data unmapped ms flush_ms" of the last
# "replica in sync" line NAME logged for node NODE_ID
last_sync() {
  sed 's/\x1b\[[0-9;]*m//g' "$work/$1.log" | grep 'replica in sync' | grep "node=$2 " | grep 'ms=' | tail -1 |
    "$PY" -c '
import re, sys
l = sys.stdin.read()
print(*(re.search(r"(?:^|\s)" + k + r"=(\d+)", l).group(1) for k in ("bytes", "data", "unmapped", "ms", "flush_ms")))'
}
# ticks NAME -> CPU ticks (user + system) node NAME's process has used so far
ticks() { local p="pid_$1"; awk '{print $14 + $15}' /proc/"${!p}"/stat; }
hz=$(getconf CLK_TCK)
node_id() { cli "$1" cluster status --json | "$PY" -c 'import json, sys; print(json.load(sys.stdin)["status"]["me"])'; }
url_of() { local p="port_$1"; echo "iscsi://127.0.0.1:${!p}/$prefix:$2/0"; } # NAME VOLUME

STEP=1052672 # 1 MiB + 4 KiB: successive requests land scattered over the LUN
qemu_secs() { # url count depth size step
  timeout 900 qemu-img bench -f raw -t none -w -c "$2" -d "$3" -s "$4" -S "$5" "$1" 2>&1 \
    | sed -n 's/Run completed in \([0-9.]*\) seconds./\1/p'
}

declare -A results
record() { results["$1"]+="$2 "; }
median() { tr ' ' '\n' | grep -v '^$' | sort -g | awk '{a[NR]=$1} END{if(NR==0){print "-"}else{print (NR%2)?a[(NR+1)/2]:(a[NR/2]+a[NR/2+1])/2}}'; }
med() { echo "${results[$1]:-}" | median; }

# --- 1 and 2: catch-up, and a client beside it --------------------------------------
cli a volume create cu --size "$DIRTY" --replicas 2 >/dev/null
primary=$(in_sync a cu)
other=$([ "$primary" = a ] && echo b || echo a)
other_id=$(node_id "$other")
url=$(url_of "$primary" cu)
# Fill it once, so the client's writes land on written blocks either way.
qemu_secs "$url" "$dirty_mib" 8 1M 1M >/dev/null
in_sync "$primary" cu >/dev/null

# away: stops the other node and writes the whole volume through the primary
away() {
  stop "$other"
  qemu_secs "$url" "$dirty_mib" 8 1M 1M >/dev/null
}
client_iops() { # -> IOPS of DURATION*10000 4 KiB scattered writes at qd32
  local n=$(( DURATION * 10000 )) secs
  secs=$(qemu_secs "$url" "$n" 32 4096 "$STEP")
  awk -v n="$n" -v t="$secs" 'BEGIN{printf "%.0f", n/t}'
}

# logged NAME TEXT NODE_ID -> how many lines NAME logged with TEXT about node NODE_ID
logged() {
  sed 's/\x1b\[[0-9;]*m//g' "$work/$1.log" | grep -E "$2" | grep -c "node=$3 " || true
}
# wait_logged NAME TEXT NODE_ID COUNT: waits (10 minutes at most) until NAME
# has logged more than COUNT such lines. Reading the log costs the machine
# far less than asking a node's status, which would compete with what is
# measured.
wait_logged() {
  for _ in $(seq 1 12000); do
    [ "$(logged "$1" "$2" "$3")" -gt "$4" ] && return 0
    sleep 0.05
  done
  echo "resync bench: $1 did not log \"$2\" in time; logs in $work" >&2
  return 1
}
# sample DIR: writes the primary's status into DIR once a second until killed
sample() {
  mkdir -p "$1"
  local i=0
  while :; do cli "$primary" cluster status --json >"$1/$i.json" 2>/dev/null || true; i=$((i + 1)); sleep 1; done
}

for round in $(seq 1 "$REPEAT"); do
  echo "resync bench: round $round of $REPEAT" >&2
  # 1. catch-up with no client I/O
  away
  synced=$(logged "$primary" 'replica in sync.*ms=' "$other_id")
  cpu0=$(ticks "$primary")
  t0=$(date +%s.%N)
  start "$other"
  wait_logged "$primary" 'replica in sync.*ms=' "$other_id" "$synced"
  t1=$(date +%s.%N)
  cpu1=$(( $(ticks "$primary") + $(ticks "$other") ))
  in_sync "$primary" cu >/dev/null
  read -r bytes _ _ ms flush_ms < <(last_sync "$primary" "$other_id")
  record catchup_bytes "$bytes"
  record catchup_ms "$ms"
  record catchup_flush_ms "$flush_ms"
  record catchup_rate "$(awk -v b="$bytes" -v ms="$ms" 'BEGIN{printf "%.2f", b/ms/1e6}')"
  record catchup_wall "$(awk -v a="$t0" -v b="$t1" 'BEGIN{printf "%.2f", b-a}')"
  record catchup_cpu "$(awk -v d=$(( cpu1 - cpu0 )) -v hz="$hz" -v b="$bytes" 'BEGIN{printf "%.2f", d/hz/(b/1073741824)}')"

  # 2. client IOPS with both copies in sync, then beside a resync; the
  # status is sampled the same way during both runs.
  sample "$work/alone.$round" &
  sampler=$!
  record iops_alone "$(client_iops)"
  kill "$sampler"; wait "$sampler" 2>/dev/null || true
  away
  # The client starts the moment the primary logs that the resync starts,
  # as a client that never stopped would see it.
  starts=$(logged "$primary" 'resync starts' "$other_id")
  synced=$(logged "$primary" 'replica in sync.*ms=' "$other_id")
  start "$other"
  wait_logged "$primary" 'resync starts' "$other_id" "$starts"
  sample "$work/busy.$round" &
  sampler=$!
  c0=$(date +%s.%N)
  record iops_resync "$(client_iops)"
  c1=$(date +%s.%N)
  kill "$sampler"; wait "$sampler" 2>/dev/null || true
  overlapped=$([ "$(logged "$primary" 'replica in sync.*ms=' "$other_id")" -gt "$synced" ] && echo 0 || echo 1)
  record overlapped "$overlapped"
  wait_logged "$primary" 'replica in sync.*ms=' "$other_id" "$synced"
  read -r _ _ _ ms _ < <(last_sync "$primary" "$other_id")
  # More than one start: the resync was interrupted and started again (the
  # time above is the last one's).
  record busy_starts "$(( $(logged "$primary" 'resync starts' "$other_id") - starts ))"
  record client_secs "$(awk -v a="$c0" -v b="$c1" 'BEGIN{printf "%.2f", b-a}')"
  record busy_resync_secs "$(awk -v ms="$ms" 'BEGIN{printf "%.2f", ms/1000}')"
  in_sync "$primary" cu >/dev/null
  # What the status showed while the client wrote (the first sample may
  # predate the client's first write).
  read -r rate limit yielding < <("$PY" -c '
import glob, json, sys
rows = []
for f in sorted(glob.glob(sys.argv[1] + "/*.json"), key=lambda f: int(f.rsplit("/", 1)[1][:-5]))[1:]:
    try:
        rows.append(json.load(open(f))["replication"]["cu"][0])
    except (ValueError, KeyError, IndexError, TypeError):
        pass
busy = [r for r in rows if r.get("state") == "syncing"]
if not busy:
    print("- none 0/0")
else:
    rates = sorted(r.get("resync_rate", 0) for r in busy)
    limits = {r.get("resync_limit") for r in busy if r.get("resync_limit")}
    y = sum(1 for r in busy if r.get("resync_yielding"))
    print("%.0f" % (rates[len(rates) // 2] / 1048576), ",".join(str(l >> 20) for l in sorted(limits)) or "none", "%d/%d" % (y, len(busy)))
' "$work/busy.$round")
  record busy_rate "$rate"
  results[busy_limit]=$limit
  results[busy_yielding]+="$yielding "
done

# --- 3: a full sync of a thin volume -----------------------------------------------
echo "resync bench: full sync of a $FULL volume" >&2
cli a volume create big --size "$FULL" --replicas 1 >/dev/null
holder=$(in_sync a big)
adds_to=$([ "$holder" = a ] && echo b || echo a)
adds_id=$(node_id "$adds_to")
big_url=$(url_of "$holder" big)
written=$(( full_bytes / 10 / 1048576 ))
qemu_secs "$big_url" "$written" 8 1M 10M >/dev/null
synced=$(logged "$holder" 'replica in sync.*ms=' "$adds_id")
t0=$(date +%s.%N)
cli "$holder" volume add-replica big --node "$adds_to" >/dev/null
wait_logged "$holder" 'replica in sync.*ms=' "$adds_id" "$synced"
t1=$(date +%s.%N)
in_sync "$holder" big >/dev/null
read -r f_bytes f_data f_unmapped f_ms _ < <(last_sync "$holder" "$adds_id")
f_wall=$(awk -v a="$t0" -v b="$t1" 'BEGIN{printf "%.2f", b-a}')

# Resyncs that stopped before the end, and why (the nodes' logs).
stopped_why=$(sed 's/\x1b\[[0-9;]*m//g' "$work/a.log" "$work/b.log" | { grep -oE 'resync (paused|interrupted): .*' || true; } |
  sed 's/ volume=.*//' | sort | uniq -c | awk '{$1=$1; print}' | paste -sd ';' -)

# --- report --------------------------------------------------------------------------
gib() { awk -v b="$1" 'BEGIN{printf "%.2f", b/1073741824}'; }
out=${OUT:-"$root/bench/results/$(date +%F)-$(hostname -s)-resync.md"}
{
  echo "# Resync, $(date +%F)"
  echo
  echo "\`bash bench/resync-speed.sh\` (REPEAT=$REPEAT, DURATION=${DURATION}s, DIRTY=$DIRTY, FULL=$FULL); medians of $REPEAT rounds."
  echo
  echo "Machine: $(nproc) CPUs, $(free -g | awk '/Mem:/{print $2}') GiB RAM, kernel $(uname -r), load before the run: $LOAD_BEFORE. Tandem: $("$tandem" --version 2>/dev/null || echo "?") ($tandem$( [ -z "$TANDEM_BIN_GIVEN" ] && echo ", built from $(git rev-parse --short HEAD 2>/dev/null)")). Two data nodes and a witness on loopback."
  echo
  echo "| measure | value | rounds |"
  echo "|---|---:|---|"
  echo "| 1. catch-up of $DIRTY dirty, no client I/O: resync rate (GB/s) | $(med catchup_rate) | ${results[catchup_rate]} |"
  echo "| 1. resync time, first chunk to in sync (ms) | $(med catchup_ms) | ${results[catchup_ms]} |"
  echo "| 1. of which the replica's final flush (ms) | $(med catchup_flush_ms) | ${results[catchup_flush_ms]} |"
  echo "| 1. wall time, node restarted to recorded in sync (s) | $(med catchup_wall) | ${results[catchup_wall]} |"
  echo "| 1. CPU time of both nodes from the restart to in sync, per GiB copied (s) | $(med catchup_cpu) | ${results[catchup_cpu]} |"
  echo "| 2. client 4 KiB qd32 writes, copies in sync (IOPS) | $(med iops_alone) | ${results[iops_alone]} |"
  echo "| 2. the same during a $DIRTY resync (IOPS) | $(med iops_resync) | ${results[iops_resync]} |"
  echo "| 2. ratio | $(awk -v a="$(med iops_resync)" -v b="$(med iops_alone)" 'BEGIN{printf "%.2f", a/b}') | |"
  echo "| 2. resync rate the status showed meanwhile (MiB/s, median of samples) | $(med busy_rate) | ${results[busy_rate]} |"
  echo "| 2. limit the status showed (MiB/s) / samples yielding | ${results[busy_limit]:-none} | ${results[busy_yielding]} |"
  echo "| 2. resync still running when the client finished (rounds) | $(echo "${results[overlapped]}" | tr ' ' '\n' | grep -c 1) of $REPEAT | |"
  echo "| 2. resyncs started for one return of the node | | ${results[busy_starts]} |"
  echo "| 2. the client's run / the whole resync it ran beside (s) | $(med client_secs) / $(med busy_resync_secs) | ${results[client_secs]}/ ${results[busy_resync_secs]} |"
  echo "| resyncs that stopped before the end (count and reason, whole run) | ${stopped_why:-none} | |"
  echo "| 3. full sync of a $FULL volume holding $written MiB: sent as data (GiB) | $(gib "$f_data") | |"
  echo "| 3. unmapped without reading (GiB) | $(gib "$f_unmapped") | |"
  echo "| 3. resync time (s) / wall time from add-replica to in sync (s) | $(awk -v ms="$f_ms" 'BEGIN{printf "%.2f", ms/1000}') / $f_wall | |"
  echo
  echo "Every copy is checked in sync by the control plane before the next step. Measurement 1's rate is the dirty bytes over the resync's own time as the primary logs it (from its first chunk to the replica's flush and the control-plane record); the wall time adds the node's start, its connection and the records. In measurement 2, the client starts the moment the primary logs that the resync starts; the resync yields to client writes (one chunk in flight, 64 MiB/s) and takes its full window again 500 ms after the last one. Sum of bytes in 3: $f_bytes (the whole volume)."
} | tee "$out"
echo "resync bench: written to $out" >&2
