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
# PyYAML reads the VCR cassettes (the same venv outside the clone that scripts/test.sh makes).
venv="${AIMATRIX_VENV:-/var/tmp/aimatrix-venv}"
if ! "$venv/bin/python" -c "import yaml" 2>/dev/null; then
    [ -x "$venv/bin/pip" ] || python3 -m venv "$venv"
    "$venv/bin/pip" install --quiet "PyYAML==6.0.3"
fi
"$venv/bin/python" scripts/check_examples.py "$target/debug/aimatrix"
"$venv/bin/python" scripts/check_examples.py "$target/debug/aimatrix" --serve
