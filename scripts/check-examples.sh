#!/usr/bin/env bash
# Runs examples/*.toml on ../shared/data and checks the answers against numbers that
# scripts/check_examples.py computes independently from the raw files: once through
# `aimatrix run`, once submitted to `aimatrix serve` and answered over HTTP.
set -euo pipefail
cd "$(dirname "$0")/.."
# The same target directory as `cargo run` (./target) unless CARGO_TARGET_DIR says otherwise.
target="${CARGO_TARGET_DIR:-target}"
# The whole workspace, as the tests build it: building the binary alone resolves other
# features and rebuilds part of DataFusion (after scripts/test.sh this builds nothing).
cargo build --quiet --workspace --all-targets
python3 scripts/check_examples.py "$target/debug/aimatrix"
python3 scripts/check_examples.py "$target/debug/aimatrix" --serve
