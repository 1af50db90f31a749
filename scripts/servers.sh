# Shell helpers shared by tests/conformance.sh and bench/run.sh: loopback
# ports, waiting for a server, and stopping every server started.
# Source it, append server PIDs to `pids`, and call stop_servers on exit.

pids=()

# A loopback port nothing answers on, below the kernel's ephemeral range
# (32768 and up by default), where outgoing connections take theirs.
free_port() {
  local p
  while :; do
    p=$(( (RANDOM % 12000) + 20000 ))
    if ! (exec 3<>"/dev/tcp/127.0.0.1/$p") 2>/dev/null; then echo "$p"; return; fi
  done
}

# wait_port PORT [HOST]: waits up to 10 s until something listens on
# HOST:PORT (HOST defaults to 127.0.0.1).
wait_port() {
  local host=${2:-127.0.0.1}
  for _ in $(seq 1 200); do
    if (exec 3<>"/dev/tcp/$host/$1") 2>/dev/null; then return 0; fi
    sleep 0.05
  done
  echo "nothing listens on $host:$1" >&2
  return 1
}

# Stops every server in `pids`. tgtd may ignore SIGTERM while it still has
# sessions: each gets five seconds, then is stopped hard.
stop_servers() {
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
  for p in "${pids[@]}"; do
    for _ in $(seq 1 50); do kill -0 "$p" 2>/dev/null || break; sleep 0.1; done
    kill -9 "$p" 2>/dev/null || true
  done
  wait 2>/dev/null || true
}

# --- clusters of Tandem nodes on loopback ---------------------------------------
# These use `tandem` (the binary) and `work` (where node NAME keeps its data
# in $work/NAME and its log in $work/NAME.log).

# cluster_node NAME [FLAG...]: starts data node NAME on new ports, ready to
# form or join a cluster, with any further flags of `tandem serve`; sets
# pid_NAME, port_NAME (iSCSI), api_NAME and cluster_NAME (its control-plane
# address).
cluster_node() {
  local name=$1 port api clu
  shift
  port=$(free_port); api=$(free_port); clu="127.0.0.1:$(free_port)"
  TANDEM_LOG=${TANDEM_LOG:-warn} "$tandem" serve --data-dir "$work/$name" \
    --iscsi-listen "127.0.0.1:$port" --api-listen "127.0.0.1:$api" --cluster-listen "$clu" \
    --repl-listen "127.0.0.1:$(free_port)" --advertise 127.0.0.1 --node-name "$name" "$@" \
    >>"$work/$name.log" 2>&1 &
  pids+=($!)
  printf -v "pid_$name" '%s' "$!"
  printf -v "port_$name" '%s' "$port"
  printf -v "api_$name" '%s' "$api"
  printf -v "cluster_$name" '%s' "$clu"
  wait_port "$api"
}

# cli NAME ARGS...: the tandem CLI against node NAME.
cli() {
  local api="api_$1" name=$1; shift
  TANDEM_API="127.0.0.1:${!api}" TANDEM_DATA_DIR="$work/$name" "$tandem" "$@"
}

# form_cluster A B [W]: node A makes a cluster, node B joins it, and a
# witness joins too (data in $work/W, log in $work/W.log; W defaults to w).
form_cluster() {
  local seed="cluster_$1" token wport w=${3:-w}
  token=$(cli "$1" cluster init | grep -o 'tandem-join:[^ ]*' | head -1)
  cli "$2" cluster join "${!seed}" --token "$token" >/dev/null
  wport=$(free_port)
  TANDEM_LOG=${TANDEM_LOG:-warn} "$tandem" witness --data-dir "$work/$w" --listen "127.0.0.1:$wport" \
    --advertise 127.0.0.1 --join "${!seed}" --token "$token" >"$work/$w.log" 2>&1 &
  pids+=($!)
}
