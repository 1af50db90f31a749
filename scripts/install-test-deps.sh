#!/usr/bin/env bash
# Installs what Tandem's end-to-end tests need on a Debian machine, only when
# it is missing: libiscsi's command-line clients, qemu-img with its iSCSI
# block driver, tgtd (the peer target we compare against), iproute2 and fio
# (the raw-file reference of bench/run.sh) and prometheus (promtool checks
# the metrics and the alert rules; a server scrapes a test cluster), and
# chromium with chromium-driver (the dashboard test drives the browser over
# WebDriver), and arping from iputils-arping (a node announces a floating
# address it takes with gratuitous ARPs; without it the initiator in the
# floating-address tests keeps sending to the old holder's MAC until its ARP
# entry ages out, about 30 s).
#
# qemu-img reads iscsi:// URLs only through Debian's qemu-block-extra, and that
# package must be the very same version as the installed qemu-utils. When
# qemu-utils came from bookworm-backports, the backports suite is added,
# derived from the machine's own Debian source entry (same mirror, same keys).
set -euo pipefail

SUDO=""
if [ "$(id -u)" -ne 0 ]; then SUDO="sudo"; fi
export DEBIAN_FRONTEND=noninteractive

have_pkg() { dpkg-query -W -f='${Status}' "$1" 2>/dev/null | grep -q "install ok installed"; }

need=()
for p in libiscsi-bin qemu-utils tgt iproute2 nftables fio prometheus chromium chromium-driver iputils-arping; do
  have_pkg "$p" || need+=("$p")
done

qemu_ver=""
if have_pkg qemu-utils; then
  qemu_ver=$(dpkg-query -W -f='${Version}' qemu-utils)
fi
extra_ok=0
if have_pkg qemu-block-extra && [ -n "$qemu_ver" ] &&
  [ "$(dpkg-query -W -f='${Version}' qemu-block-extra)" = "$qemu_ver" ]; then
  extra_ok=1
fi

if [ ${#need[@]} -eq 0 ] && [ "$extra_ok" -eq 1 ]; then
  exit 0
fi

add_backports() {
  # Reuse the URI and Signed-By of the existing Debian entry; only the suite changes.
  local codename
  codename=$(. /etc/os-release && echo "${VERSION_CODENAME:-bookworm}")
  if grep -rqs "${codename}-backports" /etc/apt/sources.list /etc/apt/sources.list.d/; then
    return 0
  fi
  local uri="" signed=""
  if [ -f /etc/apt/sources.list.d/debian.sources ]; then
    uri=$(awk '/^URIs:/ && $2 ~ /debian\/?$/ && $2 !~ /security/ {print $2; exit}' /etc/apt/sources.list.d/debian.sources)
    signed=$(awk '/^Signed-By:/ {print $2; exit}' /etc/apt/sources.list.d/debian.sources)
  fi
  if [ -z "$uri" ] && [ -f /etc/apt/sources.list ]; then
    uri=$(awk '$1=="deb" && $0 !~ /security/ {for (i=2;i<=NF;i++) if ($i ~ /^(https?|file):/) {print $i; exit}}' /etc/apt/sources.list)
  fi
  if [ -z "$uri" ]; then
    echo "install-test-deps: no Debian source entry found to derive ${codename}-backports from" >&2
    return 1
  fi
  {
    echo "Types: deb"
    echo "URIs: ${uri}"
    echo "Suites: ${codename}-backports"
    echo "Components: main"
    [ -n "$signed" ] && echo "Signed-By: ${signed}"
  } | $SUDO tee /etc/apt/sources.list.d/tandem-backports.sources >/dev/null
}

case "$qemu_ver" in
  *bpo*) add_backports ;;
esac

# The tgtd and prometheus processes that run before the install: never
# stopped here.
tgtd_before=$(echo $(pgrep -x tgtd || true))
prometheus_before=$(echo $(pgrep -x prometheus || true))
installs_tgt=0
installs_prometheus=0
for p in "${need[@]}"; do
  if [ "$p" = tgt ]; then installs_tgt=1; fi
  if [ "$p" = prometheus ]; then installs_prometheus=1; fi
done

$SUDO apt-get update -qq
if [ ${#need[@]} -gt 0 ]; then
  $SUDO apt-get install -y -qq --no-install-recommends "${need[@]}"
fi
# qemu-utils may have just been installed: read its version again.
qemu_ver=$(dpkg-query -W -f='${Version}' qemu-utils)
case "$qemu_ver" in
  *bpo*) add_backports && $SUDO apt-get update -qq ;;
esac
$SUDO apt-get install -y -qq --no-install-recommends "qemu-block-extra=${qemu_ver}"
# Installing tgt may start its daemon on 3260 (the tests start their own
# instances). Stop only a daemon this install started: a tgtd that ran before
# may be serving someone on this host.
if [ "$installs_tgt" -eq 1 ]; then
  if command -v systemctl >/dev/null 2>&1; then $SUDO systemctl stop tgt 2>/dev/null || true; fi
  for pid in $(pgrep -x tgtd || true); do
    case " $tgtd_before " in
      *" $pid "*) ;;
      *) $SUDO kill "$pid" 2>/dev/null || true ;;
    esac
  done
fi
# Installing prometheus may start its server on 9090 (the tests start their
# own on free ports): stop only one this install started.
if [ "$installs_prometheus" -eq 1 ]; then
  if command -v systemctl >/dev/null 2>&1; then $SUDO systemctl stop prometheus 2>/dev/null || true; fi
  for pid in $(pgrep -x prometheus || true); do
    case " $prometheus_before " in
      *" $pid "*) ;;
      *) $SUDO kill "$pid" 2>/dev/null || true ;;
    esac
  done
fi
