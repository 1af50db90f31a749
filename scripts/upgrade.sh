#!/usr/bin/env bash
# The rolling-upgrade test (opt-in, not part of scripts/test.sh): builds an
# earlier commit of Tandem (TANDEM_UPGRADE_FROM, a5a073e unless set) in a
# worktree under <target dir>/upgrade-from/<commit>, reused when built, and
# upgrades a running cluster from it to this build under writes, node by
# node, then one node down to it and back up.
set -euo pipefail
cd "$(dirname "$0")/.."
exec cargo test -p tandem --test e2e_rolling_upgrade -- --ignored --nocapture --test-threads 1 "$@"
