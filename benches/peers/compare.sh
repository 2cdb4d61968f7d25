#!/usr/bin/env bash
# The peers workload side by side, in one run: DuckDB (batch), the hand-written differential
# program of ../shared/peers/rust (built with mimalloc and compact keys) and AIMatrix at 1 and
# 2 workers, each REPS times in turn (so the machine's noise falls on all alike), then the
# medians, each engine's events/s as a ratio of the hand-written program's, and AIMatrix's
# answers checked against DuckDB's with ../shared/peers/verify/compare.py (counts, sums and
# timestamps exact; averages within 1e-6 ms).
#
# usage: benches/peers/compare.sh [EVENTS] [REPS]     (default: 1000000 events, 3 repetitions)
# Needs ../shared beside the checkout and GNU time (`apt-get install time`). Builds what it runs
# (release); installs DuckDB 2.0.1 from PyPI into benches/peers/.venv the first time.
set -euo pipefail
cd "$(dirname "$0")"
events="${1:-1000000}"
reps="${2:-3}"
peers="$(cd ../../../shared/peers && pwd)"
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-/var/tmp/aimatrix-target}"
dd_target="${DD_TARGET_DIR:-/var/tmp/ddbench-target}"
command -v /usr/bin/time > /dev/null || { echo "compare.sh needs GNU time: apt-get install time"; exit 1; }
out="$(mktemp -d)"
trap 'rm -rf "$out"' EXIT

mkdir -p data
[ -f "data/events_$events.jsonl" ] || python3 "$peers/gen.py" "$events" "data/events_$events.jsonl"
ln -sf "events_$events.jsonl" data/events.jsonl
data="$PWD/data/events_$events.jsonl"

echo "== building AIMatrix and the hand-written program (release)"
cargo build --release --quiet -p aimatrix --bin aimatrix
amx="$CARGO_TARGET_DIR/release/aimatrix"
(cd "$peers/rust" && CARGO_TARGET_DIR="$dd_target" cargo build --release --quiet --features mimalloc,compact_keys)
dd="$dd_target/release/ddbench"
if [ ! -x .venv/bin/python ]; then
    echo "== installing DuckDB into benches/peers/.venv"
    python3 -m venv .venv
    # The version ../shared/peers measured with.
    .venv/bin/pip install --quiet duckdb==2.0.1
fi

# run NAME COMMAND...: one timed run, "NAME SECONDS PEAK_KB" appended to $out/runs.
run() {
    local name="$1"
    shift
    /usr/bin/time -f "$name %e %M" -o "$out/time" "$@" > "$out/log" 2>&1 || {
        echo "$name failed:"
        tail -20 "$out/log"
        exit 1
    }
    cat "$out/time" >> "$out/runs"
    tail -1 "$out/time"
}

for rep in $(seq "$reps"); do
    echo "== repetition $rep of $reps (name, seconds, peak KB)"
    run hand-written "$dd" "$data" -- -w 2
    run duckdb .venv/bin/python "$peers/duckdb/duck_job.py" "$data" --threads 2
    run aimatrix-1w "$amx" run peers.toml --quiet --workers 1
    run aimatrix-2w "$amx" run peers.toml --quiet --workers 2
done

echo "== medians of $reps runs, $events events"
python3 - "$out/runs" "$events" <<'EOF'
import statistics, sys
runs = {}
for line in open(sys.argv[1]):
    name, secs, kb = line.split()
    runs.setdefault(name, []).append((float(secs), int(kb)))
events = int(sys.argv[2])
base = statistics.median(s for s, _ in runs["hand-written"])
print(f"| engine | wall s (median) | events/s | × hand-written | peak RSS (median) |")
print(f"|---|---|---|---|---|")
for name, r in runs.items():
    secs = statistics.median(s for s, _ in r)
    kb = statistics.median(k for _, k in r)
    print(f"| {name} | {secs:.2f} | {events / secs:,.0f} | {base / secs:.2f} | {kb / 1024 / 1024:.2f} GB |")
one, two = (statistics.median(s for s, _ in runs[n]) for n in ("aimatrix-1w", "aimatrix-2w"))
print(f"AIMatrix 2 workers over 1 worker: {one / two:.2f}x")
EOF

echo "== answers: AIMatrix (2 workers) against DuckDB"
.venv/bin/python "$peers/duckdb/duck_job.py" "$data" --threads 2 --verify "$out/duckdb" > /dev/null
mkdir -p "$out/aimatrix"
"$amx" run peers.toml --quiet --workers 2 --output json \
    --sql "SELECT * FROM q1" --sql "SELECT * FROM q2" --sql "SELECT * FROM q3" 2> /dev/null \
    | python3 -c '
import json, sys
answers = [line for line in sys.stdin if line.startswith("[")]
assert len(answers) == 3, f"{len(answers)} answers"
for i, answer in enumerate(answers, 1):
    with open(sys.argv[1] + f"/q{i}.jsonl", "w") as f:
        for row in json.loads(answer):
            f.write(json.dumps(row) + "\n")
' "$out/aimatrix"
python3 "$peers/verify/compare.py" "$out/duckdb" "$out/aimatrix"
