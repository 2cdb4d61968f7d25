#!/usr/bin/env bash
# The services of examples/pipeline.toml, on 127.0.0.1, for trying a streaming pipeline:
#
#   scripts/pipeline.sh up                 a Kafka broker on :19092 (Apache Kafka 4.1, through
#                                          ../shared/services/kafka-broker.sh: java >= 17, and mvn
#                                          the first time) and moto's S3 server on :19000 (PyPI),
#                                          with the topics and the bucket the example uses
#   scripts/pipeline.sh produce FILE       each line of FILE as one message of wikipedia-changes
#   scripts/pipeline.sh topic              the sink topic page-sizes, folded by key (the view)
#   scripts/pipeline.sh lake               the Parquet sets under s3://lake/page_sizes/, folded
#   scripts/pipeline.sh env                the AWS_* settings `aimatrix serve` needs for moto
#   scripts/pipeline.sh down               stops both (their data stays in $DIR)
#
# State goes to $AIMATRIX_PIPELINE_DIR (default /var/tmp/aimatrix-pipeline); the Python clients
# (confluent-kafka, boto3, pyarrow) go into the venv scripts/test.sh uses.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
dir="${AIMATRIX_PIPELINE_DIR:-/var/tmp/aimatrix-pipeline}"
venv="${AIMATRIX_VENV:-/var/tmp/aimatrix-venv}"
broker_script="${AIMATRIX_KAFKA_BROKER_SCRIPT:-$here/../../shared/services/kafka-broker.sh}"
export BROKERS=127.0.0.1:19092 S3=http://127.0.0.1:19000

python_env() {
    [ -x "$venv/bin/pip" ] || python3 -m venv "$venv"
    "$venv/bin/python" -c "import confluent_kafka, boto3, pyarrow, moto" 2>/dev/null ||
        "$venv/bin/pip" install --quiet "moto[server]==5.2.6" confluent-kafka boto3 pyarrow
}

case "${1:-}" in
up)
    mkdir -p "$dir"
    python_env
    [ -f "$broker_script" ] || { echo "no $broker_script (set AIMATRIX_KAFKA_BROKER_SCRIPT)" >&2; exit 1; }
    KAFKA_CONTROLLER_PORT=19093 bash "$broker_script" start 19092 "$dir/kafka" >/dev/null
    if ! curl -s -o /dev/null "$S3"; then
        nohup "$venv/bin/moto_server" -H 127.0.0.1 -p 19000 >"$dir/moto.log" 2>&1 &
        echo $! >"$dir/moto.pid"
        for _ in $(seq 100); do curl -s -o /dev/null "$S3" && break; sleep 0.1; done
    fi
    "$venv/bin/python" "$here/pipeline.py" setup
    echo "Kafka on $BROKERS, S3 on $S3 (bucket lake). Start the server with:"
    echo "  env \$(scripts/pipeline.sh env) cargo run -- serve --data-dir $dir/data"
    ;;
produce | topic | lake)
    "$venv/bin/python" "$here/pipeline.py" "$@"
    ;;
env)
    echo "AWS_ENDPOINT=$S3 AWS_ALLOW_HTTP=true AWS_ACCESS_KEY_ID=test AWS_SECRET_ACCESS_KEY=test AWS_REGION=us-east-1"
    ;;
down)
    bash "$broker_script" stop "$dir/kafka" >/dev/null 2>&1 || true
    if [ -f "$dir/moto.pid" ]; then kill "$(cat "$dir/moto.pid")" 2>/dev/null || true; rm -f "$dir/moto.pid"; fi
    echo "stopped (data kept in $dir)"
    ;;
*)
    sed -n '2,14p' "$0" >&2
    exit 2
    ;;
esac
