#!/usr/bin/env bash
# The whole test suite: installs the clients the end-to-end tests drive when
# missing, checks formatting and lints, runs every test of the workspace, then
# libiscsi's conformance suite against a live Tandem, and against a volume
# mirrored on two nodes with the suite's initiators on both, with a floor on
# passes for each.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/install-test-deps.sh
cargo fmt --all -- --check
cargo clippy --workspace --all-targets -- -D warnings
cargo test --workspace
cargo build -p tandem
TANDEM_BIN="${CARGO_TARGET_DIR:-$PWD/target}/debug/tandem" bash tests/conformance.sh --cluster --check-floor
