#!/usr/bin/env bash
# The test suite: unit, view, oracle (proptest), decoder, SQL and two-process cluster tests.
set -euo pipefail
cd "$(dirname "$0")/.."
# Builds into the same target directory as `cargo run` (./target), so the README's two
# commands build once; CI points CARGO_TARGET_DIR elsewhere to reuse a build.
cargo test --workspace --all-targets "$@"
