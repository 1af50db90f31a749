#!/usr/bin/env bash
# The whole test suite: installs the clients the end-to-end tests drive when
# missing, checks formatting and lints, runs every test of the workspace, then
# libiscsi's conformance suite against a live Tandem, and against a volume
# mirrored on two nodes with the suite's initiators on both, with a floor on
# passes for each.
set -euo pipefail
cd "$(dirname "$0")/.."
# A clean clone gains nothing from incremental compilation, which doubles
# what the workspace's own crates leave on disk.
if [ "${CI:-}" = true ]; then export CARGO_INCREMENTAL=0; fi
target="${CARGO_TARGET_DIR:-$PWD/target}"
mkdir -p "$target"
echo "disk before the build: $(df -h --output=avail "$target" | tail -1 | tr -d ' ') free"
bash scripts/install-test-deps.sh
cargo fmt --all -- --check
cargo clippy --workspace --all-targets -- -D warnings
cargo test --workspace --no-run
cargo build -p tandem
echo "disk after the build: $(df -h --output=avail "$target" | tail -1 | tr -d ' ') free, target $(du -sh "$target" | cut -f1)"
cargo test --workspace
TANDEM_BIN="$target/debug/tandem" bash tests/conformance.sh --cluster --check-floor
