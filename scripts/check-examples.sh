#!/usr/bin/env bash
# Runs examples/*.toml on ../shared/data and checks the answers against numbers that
# scripts/check_examples.py computes independently from the raw files.
set -euo pipefail
cd "$(dirname "$0")/.."
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-/var/tmp/aimatrix-target}"
cargo build --quiet --bin aimatrix
python3 scripts/check_examples.py "$CARGO_TARGET_DIR/debug/aimatrix"
