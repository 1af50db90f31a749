# The setup the benchmarks share; sourced by them, with `root` (the
# checkout) and `bench` (the benchmark's name, for messages) set.

# bench_options "$@": `--quick` as the first argument sets quick=1 (one
# round, short runs); REPEAT (rounds) and DURATION (seconds per run) default
# to 1 and 2 with it, 3 and 5 without.
bench_options() {
  quick=0
  [ "${1:-}" = "--quick" ] && quick=1
  REPEAT=${REPEAT:-$([ $quick = 1 ] && echo 1 || echo 3)}
  DURATION=${DURATION:-$([ $quick = 1 ] && echo 2 || echo 5)}
}

# need TOOL...: stops (exit 2) when one of the tools is missing.
need() {
  local t
  for t in "$@"; do
    command -v "$t" >/dev/null || { echo "$bench: $t is missing; run scripts/install-test-deps.sh" >&2; exit 2; }
  done
}

# need_qemu_iscsi: stops when qemu-img cannot open iscsi:// URLs.
need_qemu_iscsi() {
  qemu-img --help | grep -q iscsi || { echo "$bench: qemu-img cannot open iscsi:// (install qemu-block-extra)" >&2; exit 2; }
}

# tandem_binary: sets `tandem` to $TANDEM_BIN, else to a release build of
# this checkout, built now; TANDEM_BIN_GIVEN is empty in the second case.
tandem_binary() {
  TANDEM_BIN_GIVEN=${TANDEM_BIN:-}
  if [ -z "${TANDEM_BIN:-}" ]; then
    echo "$bench: building Tandem (release)" >&2
    cargo build --release -q -p tandem --bin tandem
    TANDEM_BIN="${CARGO_TARGET_DIR:-$root/target}/release/tandem"
  fi
  tandem=$TANDEM_BIN
}

# bench_work PREFIX: sets `work` to a new directory under BENCH_DIR (default
# /var/tmp) and loads scripts/servers.sh; on exit the servers started stop
# and the directory is removed (KEEP=1 keeps it, logs included).
bench_work() {
  work=$(mktemp -d "${BENCH_DIR:-/var/tmp}/$1.XXXXXX")
  # shellcheck source=../scripts/servers.sh
  . "$root/scripts/servers.sh"
  trap bench_cleanup EXIT
}

bench_cleanup() {
  stop_servers 2>/dev/null
  if [ -n "${KEEP:-}" ]; then echo "$bench: kept $work" >&2; else rm -rf "$work"; fi
}

# median < numbers separated by spaces or lines (nan and empty ones left
# out): the middle one, or the mean of the two middle ones; "-" for none.
median() { tr ' ' '\n' | grep -v '^$' | grep -v nan | sort -g | awk '{a[NR]=$1} END{if(NR==0){print "-"}else{print (NR%2)?a[(NR+1)/2]:(a[NR/2]+a[NR/2+1])/2}}'; }

# settled_primary CLI NAME: waits (up to a minute) until volume "bench" of
# NAME's cluster has a primary and both copies in sync, asking NAME through
# CLI (a function that runs the tandem CLI against a node: `CLI NAME ARGS`);
# prints the primary's node name.
settled_primary() {
  local cli=$1 name=$2 who
  for _ in $(seq 1 600); do
    who=$("$cli" "$name" cluster status --json 2>/dev/null | python3 -c '
import json, sys
s = json.load(sys.stdin)["status"]
v = s["state"]["volumes"].get("bench")
nodes = s["state"]["nodes"]
if v and len(v["replicas"]) == 2 and all(r["state"] == "in-sync" for r in v["replicas"].values()):
    print(nodes[str(v["primary"])]["name"])
' 2>/dev/null || true)
    if [ -n "$who" ]; then echo "$who"; return 0; fi
    sleep 0.1
  done
  echo "$bench: the volume did not settle; logs in $work" >&2
  return 1
}

# standalone_node: a standalone `tandem serve` on loopback with volume
# "bench" of SIZE; sets port_single, api_single and pid_single (the CLI
# reaches it as `cli single`).
standalone_node() {
  port_single=$(free_port); api_single=$(free_port)
  TANDEM_LOG=warn "$tandem" serve --data-dir "$work/single" --iscsi-listen "127.0.0.1:$port_single" \
    --api-listen "127.0.0.1:$api_single" >"$work/single.log" 2>&1 &
  pids+=($!)
  pid_single=$!
  wait_port "$api_single"
  cli single volume create bench --size "$SIZE" >/dev/null
}
