#!/usr/bin/env bash
# What a primary killed under random writes gets copied when it returns,
# against what was written while it was away (two data nodes and a witness
# as processes on loopback; see crates/tandem/tests/resync_after_primary_killed.rs).
set -euo pipefail
cd "$(dirname "$0")/.."
cargo test -q --release -p tandem --test resync_after_primary_killed -- --ignored --nocapture 2>&1 |
    grep -E '^(writes before|written while|resync copied)|panicked|FAILED'
