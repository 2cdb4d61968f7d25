#!/usr/bin/env bash
# Property-based test of the HTTP API against its OpenAPI document (scripts/openapi_check.py),
# with Schemathesis from PyPI in a venv outside the clone (made once, reused after).
set -euo pipefail
cd "$(dirname "$0")/.."
venv="${AIMATRIX_VENV:-/var/tmp/aimatrix-venv}"
if [ ! -x "$venv/bin/schemathesis" ]; then
    python3 -m venv "$venv"
    "$venv/bin/pip" install --quiet "schemathesis==4.32.5"
fi
target="${CARGO_TARGET_DIR:-target}"
cargo build --quiet --workspace --all-targets
python3 scripts/openapi_check.py "$target/debug/aimatrix" "$venv/bin/schemathesis" "${MAX_EXAMPLES:-100}"
