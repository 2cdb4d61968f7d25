#!/usr/bin/env bash
# Runs the shared/peers workload (Q1-Q3 of ../shared/peers/queries.sql) on AIMatrix, for
# comparison with the peers' figures (../shared/peers/README.md) on the same machine.
# usage: benches/peers/run.sh [EVENTS] [WORKERS]     (default: 1000000 events, 2 workers)
set -euo pipefail
cd "$(dirname "$0")"
events="${1:-1000000}"
workers="${2:-2}"
command -v /usr/bin/time > /dev/null || { echo "run.sh needs GNU time: apt-get install time"; exit 1; }
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-/var/tmp/aimatrix-target}"
mkdir -p data
[ -f "data/events_$events.jsonl" ] || python3 ../../../shared/peers/gen.py "$events" "data/events_$events.jsonl"
ln -sf "events_$events.jsonl" data/events.jsonl
cargo build --release --quiet -p aimatrix --bin aimatrix
/usr/bin/time -v "$CARGO_TARGET_DIR/release/aimatrix" run peers.toml --quiet --workers "$workers" 2>&1 \
  | grep -E "read |rows|^\| [0-9]|Elapsed|Maximum resident"
