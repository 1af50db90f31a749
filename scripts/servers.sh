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

# Waits up to 10 s until something listens on 127.0.0.1:PORT.
wait_port() {
  for _ in $(seq 1 200); do
    if (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; then return 0; fi
    sleep 0.05
  done
  echo "nothing listens on 127.0.0.1:$1" >&2
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
