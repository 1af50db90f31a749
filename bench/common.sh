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
