#!/usr/bin/env bash
# The test suite: unit, view, oracle (proptest), decoder, SQL and two-process cluster tests.
set -euo pipefail
cd "$(dirname "$0")/.."
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-/var/tmp/aimatrix-target}"
cargo test --workspace --all-targets "$@"
