#!/usr/bin/env bash
# Where a mirrored write's CPU goes, process by process, beside a standalone
# write, in one run on this machine: 4 KiB scattered writes at qd32 to a
# standalone `tandem serve`, to a mirrored volume's primary, and to the other
# node of its cluster (forwarded). For each Tandem process of each setup it
# reports, per write: user and system CPU time (/proc/PID/stat) and, where
# `perf stat` works, system calls by kind and context switches. The initiator
# is not counted. Prints a markdown table and writes it to
# bench/results/<date>-<host>-mirror-profile.md.
#
#   bash bench/mirror-profile.sh            # REPEAT=3 rounds, setups rotated, medians
#   bash bench/mirror-profile.sh --quick    # one short round
#
# Environment: REPEAT, WRITES (writes per run, default 100000; 20000 with
# --quick), SIZE (volume size, default 1G), BENCH_DIR, TANDEM_BIN (another
# build), OUT (where the table goes), as in bench/mirror.sh.
set -euo pipefail
cd "$(dirname "$0")/.."
root=$PWD

bench="mirror profile"
# shellcheck source=common.sh
. "$root/bench/common.sh"
bench_options "$@"
SIZE=${SIZE:-1G}
WRITES=${WRITES:-$([ "$quick" = 1 ] && echo 20000 || echo 100000)}

need qemu-img python3 numfmt
need_qemu_iscsi
tandem_binary
bench_work tandem-mirror-profile

size_bytes=$(numfmt --from=iec "$SIZE")
iqn=iqn.2026-11.io.tandem:bench
# The system calls counted one by one; "all" counts every one.
CALLS=(pwrite64 preadv2 writev sendto recvfrom epoll_wait futex getrusage fdatasync)
perf_ok=0
if command -v perf >/dev/null && perf stat -e raw_syscalls:sys_enter -x, -o /dev/null -- true 2>/dev/null; then
  perf_ok=1
else
  echo "$bench: perf stat cannot count system calls here (install linux-perf, run as root): CPU time only" >&2
fi

# --- the setups ----------------------------------------------------------------
standalone_node

cluster_node a
cluster_node b
form_cluster a b
cli a volume create bench --size "$SIZE" --replicas 2 >/dev/null
primary=$(settled_primary cli a)
other=$([ "$primary" = a ] && echo b || echo a)
pid_of() { local v="pid_$1"; echo "${!v}"; }
url_of() { local p="port_$1"; echo "iscsi://127.0.0.1:${!p}/$iqn/0"; }

# Each setup: the node the initiator writes to, and the processes counted,
# labelled by their part in the write.
declare -A url procs
url[standalone]=$(url_of single); procs[standalone]="node:$pid_single"
url[primary]=$(url_of "$primary"); procs[primary]="primary:$(pid_of "$primary") copy:$(pid_of "$other")"
url[forwarded]=$(url_of "$other"); procs[forwarded]="forwarding:$(pid_of "$other") primary:$(pid_of "$primary")"

for u in "${url[standalone]}" "${url[primary]}"; do
  qemu-img bench -f raw -t none -w -c $(( size_bytes / 65536 )) -d 8 -s 65536 -S 65536 "$u" >/dev/null 2>&1
done

# --- measurements ----------------------------------------------------------------
hz=$(getconf CLK_TCK)
declare -A results
record() { results["$1|$2"]+="$3 "; }
cpu_ticks() { awk '{print $14, $15}' /proc/"$1"/stat; }

measure() { # setup
  local setup=$1 p pid part before=() stats=() i=0 secs
  for p in ${procs[$setup]}; do
    pid=${p#*:}
    before+=("$(cpu_ticks "$pid")")
    if [ $perf_ok = 1 ]; then
      local events=raw_syscalls:sys_enter,context-switches c
      for c in "${CALLS[@]}"; do events+=",syscalls:sys_enter_$c"; done
      perf stat -x, -e "$events" -p "$pid" -o "$work/stat.$pid" &
      stats+=($!)
    fi
  done
  sleep 0.3
  secs=$(timeout 600 qemu-img bench -f raw -t none -w -c "$WRITES" -d 32 -s 4096 -S 1052672 "${url[$setup]}" 2>&1 \
    | sed -n 's/Run completed in \([0-9.]*\) seconds./\1/p')
  [ ${#stats[@]} -gt 0 ] && { kill -INT "${stats[@]}"; wait "${stats[@]}" 2>/dev/null || true; }
  record "$setup" iops "$(awk -v n="$WRITES" -v t="$secs" 'BEGIN{printf "%.0f", n/t}')"
  local total=0
  for p in ${procs[$setup]}; do
    part=${p%%:*}; pid=${p#*:}
    read -r u0 s0 <<<"${before[$i]}"; i=$((i + 1))
    read -r u1 s1 < <(cpu_ticks "$pid")
    record "$setup" "$part|user" "$(awk -v d=$(( u1 - u0 )) -v hz="$hz" -v n="$WRITES" 'BEGIN{printf "%.2f", d/hz*1e6/n}')"
    record "$setup" "$part|system" "$(awk -v d=$(( s1 - s0 )) -v hz="$hz" -v n="$WRITES" 'BEGIN{printf "%.2f", d/hz*1e6/n}')"
    total=$(( total + u1 - u0 + s1 - s0 ))
    if [ $perf_ok = 1 ]; then
      while IFS=, read -r count _ event _; do
        case $event in
          raw_syscalls:sys_enter) key=all ;;
          context-switches) key=switches ;;
          syscalls:sys_enter_*) key=${event#syscalls:sys_enter_} ;;
          *) continue ;;
        esac
        [[ $count =~ ^[0-9]+$ ]] || continue
        record "$setup" "$part|$key" "$(awk -v c="$count" -v n="$WRITES" 'BEGIN{printf "%.3f", c/n}')"
      done < "$work/stat.$pid"
    fi
  done
  record "$setup" cpu "$(awk -v d=$total -v hz="$hz" -v n="$WRITES" 'BEGIN{printf "%.2f", d/hz*1e6/n}')"
}

setups=(standalone primary forwarded)
for round in $(seq 1 "$REPEAT"); do
  echo "$bench: round $round of $REPEAT" >&2
  for i in 0 1 2; do measure "${setups[$(( (i + round) % 3 ))]}"; done
done

med() { echo "${results[$1|$2]:-}" | median; }
out=${OUT:-"$root/bench/results/$(date +%F)-$(hostname -s)-mirror-profile.md"}
# Columns: each setup's processes, then its sum.
cols=()
for s in "${setups[@]}"; do
  for p in ${procs[$s]}; do cols+=("$s|${p%%:*}"); done
  cols+=("$s|sum")
done
cell() { # column row
  local s=${1%%|*} part=${1#*|} p v sum=0 any=0
  if [ "$part" != sum ]; then med "$s" "$part|$2"; return; fi
  for p in ${procs[$s]}; do
    v=$(med "$s" "${p%%:*}|$2")
    [ "$v" = - ] && continue
    sum=$(awk -v a="$sum" -v b="$v" 'BEGIN{print a+b}'); any=1
  done
  if [ $any = 1 ]; then awk -v a="$sum" 'BEGIN{printf "%.2f", a}'; else echo -; fi
}
{
  echo "# Where a mirrored write's CPU goes, $(date +%F)"
  echo
  echo "\`bash bench/mirror-profile.sh\` (REPEAT=$REPEAT, WRITES=$WRITES, SIZE=$SIZE): 4 KiB scattered writes at qd32 (\`qemu-img bench -w -d 32 -s 4096 -S 1052672\`) after a 64 KiB fill; medians of $REPEAT rounds, setups rotated. Every figure is per write."
  echo
  echo "Machine: $(nproc) CPUs, $(free -g | awk '/Mem:/{print $2}') GiB RAM, kernel $(uname -r). Tandem: $("$tandem" --version 2>/dev/null || echo "?") ($tandem$( [ -z "$TANDEM_BIN_GIVEN" ] && echo ", built from $(git rev-parse --short HEAD 2>/dev/null)"))."
  echo
  echo "| setup | IOPS | CPU per write, all its processes (µs) | of standalone |"
  echo "|---|---:|---:|---:|"
  base=$(med standalone cpu)
  for s in "${setups[@]}"; do
    c=$(med "$s" cpu)
    echo "| $s | $(med "$s" iops) | $c | $(awk -v a="$c" -v b="$base" 'BEGIN{ if (b+0 == 0) print "-"; else printf "%.2f", a/b }') |"
  done
  echo
  printf "| per write |"; for c in "${cols[@]}"; do printf " %s: %s |" "${c%%|*}" "${c#*|}"; done; echo
  printf "|---|"; for _ in "${cols[@]}"; do printf -- "---:|"; done; echo
  rows=("user|user CPU (µs)" "system|system CPU (µs)")
  if [ $perf_ok = 1 ]; then
    rows+=("switches|context switches" "all|system calls, all")
    for c in "${CALLS[@]}"; do rows+=("$c|$c"); done
  fi
  for r in "${rows[@]}"; do
    printf "| %s |" "${r#*|}"
    for c in "${cols[@]}"; do printf " %s |" "$(cell "$c" "${r%%|*}")"; done
    echo
  done
  echo
  echo "\"forwarded\": the initiator writes to the node that is not the primary, which forwards each write to the primary; that node also holds the volume's second copy, so its figures include the copy's work."
} | tee "$out"
echo "$bench: written to $out" >&2
