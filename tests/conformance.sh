#!/usr/bin/env bash
# SCSI/iSCSI conformance: runs libiscsi's iscsi-test-cu over ALL suites with
# the destructive (--dataloss) tests against a fresh Tandem LUN and, with
# --tgt, against tgtd (Debian's userspace target) on the same machine, and
# prints passed / failed / skipped side by side.
#
# With --cluster it runs the suite once more against a volume mirrored on a
# two-node cluster (plus witness) on loopback, with its two URLs on the two
# nodes: the second initiator of the reservation and multipath suites logs
# in through the other node.
#
# iscsi-test-cu's own summary counts a skipped test as passed; this script
# reads each test's lines and counts [SKIPPED] tests apart.
#
#   tests/conformance.sh [--tgt] [--cluster] [--check-floor] [--out DIR]
#
# --check-floor fails when Tandem passes fewer tests than tests/conformance-floor
# (and, with --cluster, the cross-node run fewer than tests/conformance-cluster-floor).
set -euo pipefail
cd "$(dirname "$0")/.."
root=$PWD

with_tgt=0
with_cluster=0
check_floor=0
out=""
while [ $# -gt 0 ]; do
  case "$1" in
    --tgt) with_tgt=1 ;;
    --cluster) with_cluster=1 ;;
    --check-floor) check_floor=1 ;;
    --out) out="$2"; shift ;;
    *) echo "usage: $0 [--tgt] [--cluster] [--check-floor] [--out DIR]" >&2; exit 2 ;;
  esac
  shift
done

for tool in iscsi-test-cu iscsi-ls; do
  command -v "$tool" >/dev/null || { echo "conformance: $tool is missing; run scripts/install-test-deps.sh" >&2; exit 2; }
done
if [ "$with_tgt" = 1 ]; then
  command -v tgtd >/dev/null || { echo "conformance: tgtd is missing; run scripts/install-test-deps.sh" >&2; exit 2; }
fi

work=$(mktemp -d /tmp/tandem-conformance.XXXXXX)
[ -n "$out" ] || out="$work"
mkdir -p "$out"
# shellcheck source=../scripts/servers.sh
. "$root/scripts/servers.sh"
cleanup() {
  stop_servers 2>/dev/null
  rm -rf "$work/data" "$work/tgt.img" "$work/a" "$work/b" "$work/w"
}
trap cleanup EXIT

LUN_SIZE=${LUN_SIZE:-256M}
SUITE_TIMEOUT=${SUITE_TIMEOUT:-900}

# Parses an iscsi-test-cu log into "passed failed skipped" and lists failures.
summarize() { # log failures-file
  awk -v failures="$2" '
    function finish(result) {
      if (name == "") return
      if (result == "FAILED") { failed++; print suite "." name > failures }
      else if (skipped) skip++
      else passed++
      name = ""; skipped = 0
    }
    /^Suite: / { suite = $2; next }
    /^  Test: / {
      finish("")
      name = $2; skipped = 0
      if ($0 ~ /\[SKIPPED\]/) skipped = 1
      if ($0 ~ /\.\.\.passed$/) finish("passed")
      else if ($0 ~ /\.\.\.FAILED$/) finish("FAILED")
      next
    }
    name != "" && /\[SKIPPED\]/ { skipped = 1 }
    name != "" && /^passed$/ { finish("passed"); next }
    name != "" && /^FAILED$/ { finish("FAILED"); next }
    END { printf "%d %d %d\n", passed, failed, skip }
  ' "$1"
}

run_suite() { # label url [second-url]
  local label=$1 url=$2 url2=${3:-$2} log="$out/$1.log"
  echo "conformance: running iscsi-test-cu against $label ($url $url2)" >&2
  timeout "$SUITE_TIMEOUT" iscsi-test-cu --dataloss --test ALL "$url" "$url2" >"$log" 2>&1 || true
  : >"$out/$label.failures"
  summarize "$log" "$out/$label.failures" >"$out/$label.counts"
}

# --- Tandem -----------------------------------------------------------------
bin=${TANDEM_BIN:-}
if [ -z "$bin" ]; then
  cargo build --release -q -p tandem
  bin="$root/target/release/tandem"
fi
iport=$(free_port)
aport=$(free_port)
TANDEM_LOG=warn "$bin" serve --data-dir "$work/data" \
  --iscsi-listen "127.0.0.1:$iport" --api-listen "127.0.0.1:$aport" >"$out/tandem-server.log" 2>&1 &
pids+=($!)
wait_port "$aport"
TANDEM_API="127.0.0.1:$aport" TANDEM_DATA_DIR="$work/data" "$bin" volume create conformance --size "$LUN_SIZE" >/dev/null
run_suite tandem "iscsi://127.0.0.1:$iport/iqn.2026-11.io.tandem:conformance/0"

# --- tgtd -------------------------------------------------------------------
if [ "$with_tgt" = 1 ]; then
  tport=$(free_port)
  cport=$(( (RANDOM % 200) + 20 ))
  truncate -s "$LUN_SIZE" "$work/tgt.img"
  tgtd -f -C "$cport" --iscsi "portal=127.0.0.1:$tport" >"$out/tgtd-server.log" 2>&1 &
  pids+=($!)
  wait_port "$tport"
  tgtadm -C "$cport" --lld iscsi --mode target --op new --tid 1 --targetname iqn.2001-04.org.debian:conformance
  tgtadm -C "$cport" --lld iscsi --mode logicalunit --op new --tid 1 --lun 1 --backing-store "$work/tgt.img"
  tgtadm -C "$cport" --lld iscsi --mode target --op bind --tid 1 --initiator-address ALL
  run_suite tgtd "iscsi://127.0.0.1:$tport/iqn.2001-04.org.debian:conformance/1"
fi

# --- Tandem, two nodes --------------------------------------------------------
if [ "$with_cluster" = 1 ]; then
  # Nodes' logs: $work/a.log, $work/b.log, $work/w.log.
  tandem=$bin
  cluster_node a
  cluster_node b
  form_cluster a b
  cli a volume create conformance --size "$LUN_SIZE" --replicas 2 >/dev/null
  # Both copies in sync before the suite starts.
  for _ in $(seq 1 600); do
    cli a cluster status --json 2>/dev/null | python3 -c '
import json, sys
v = json.load(sys.stdin)["status"]["state"]["volumes"].get("conformance")
sys.exit(0 if v and len(v["replicas"]) == 2 and all(r["state"] == "in-sync" for r in v["replicas"].values()) else 1)
' && break
    sleep 0.1
  done
  target=iqn.2026-11.io.tandem:conformance
  run_suite cluster "iscsi://127.0.0.1:$port_a/$target/0" "iscsi://127.0.0.1:$port_b/$target/0"
fi

# --- report -----------------------------------------------------------------
printf '\n%-8s %7s %7s %8s\n' target passed failed skipped
for label in tandem cluster tgtd; do
  [ -f "$out/$label.counts" ] || continue
  read -r p f s <"$out/$label.counts"
  printf '%-8s %7d %7d %8d\n' "$label" "$p" "$f" "$s"
done
echo
echo "Tandem failures:"
sed 's/^/  /' "$out/tandem.failures"
if [ -f "$out/cluster.failures" ]; then
  echo "Tandem failures across two nodes:"
  sed 's/^/  /' "$out/cluster.failures"
  [ "$out" = "$work" ] || cp "$work"/a.log "$work"/b.log "$work"/w.log "$out"/ 2>/dev/null || true
fi
echo "logs: $out"

read -r tp tf ts <"$out/tandem.counts"
if [ $((tp + tf + ts)) -eq 0 ]; then
  echo "conformance: iscsi-test-cu ran no test against Tandem; see $out/tandem.log" >&2
  exit 1
fi
if [ "$check_floor" = 1 ]; then
  floor=$(grep -v '^#' tests/conformance-floor | tr -d '[:space:]')
  if [ "$tp" -lt "$floor" ]; then
    echo "conformance: Tandem passed $tp tests, below the floor of $floor (tests/conformance-floor)" >&2
    exit 1
  fi
  echo "conformance: Tandem passed $tp tests (floor $floor)"
  if [ -f "$out/cluster.counts" ]; then
    read -r cp cf cs <"$out/cluster.counts"
    cfloor=$(grep -v '^#' tests/conformance-cluster-floor | tr -d '[:space:]')
    if [ "$cp" -lt "$cfloor" ]; then
      echo "conformance: Tandem passed $cp tests across two nodes, below the floor of $cfloor (tests/conformance-cluster-floor)" >&2
      exit 1
    fi
    echo "conformance: Tandem passed $cp tests across two nodes (floor $cfloor)"
  fi
fi
