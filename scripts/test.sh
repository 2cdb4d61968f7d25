#!/usr/bin/env bash
# The test suite: unit, view, oracle (proptest), decoder, SQL and two-process cluster tests.
set -euo pipefail
cd "$(dirname "$0")/.."
# librdkafka is built from source: a C compiler, make and zlib's headers.
scripts/build-deps.sh
# The S3 tests run against moto's S3-compatible server (PyPI), in a venv outside the clone
# (made once, reused after; scripts/openapi-check.sh shares it).
venv="${AIMATRIX_VENV:-/var/tmp/aimatrix-venv}"
if [ ! -x "$venv/bin/moto_server" ]; then
    [ -x "$venv/bin/pip" ] || python3 -m venv "$venv"
    "$venv/bin/pip" install --quiet "moto[server]==5.2.6"
fi
export AIMATRIX_MOTO_SERVER="$venv/bin/moto_server"
# The pgwire tests also drive psycopg 3 (PyPI), as Python users connect.
if ! "$venv/bin/python" -c "import psycopg" 2>/dev/null; then
    "$venv/bin/pip" install --quiet "psycopg[binary]==3.3.9"
fi
# The OTLP/gRPC receiver's test exports with OpenTelemetry's Python SDK (its default exporter: gRPC).
if ! "$venv/bin/python" -c "import opentelemetry.exporter.otlp.proto.grpc, opentelemetry.sdk" 2>/dev/null; then
    "$venv/bin/pip" install --quiet "opentelemetry-sdk==1.45.2" "opentelemetry-exporter-otlp-proto-grpc==1.45.2"
fi
# The console's test drives a real headless browser: Debian's chromium and chromedriver (as
# root; elsewhere install them yourself), with Selenium and axe-core (axe-selenium-python) from PyPI.
# A failed install does not stop the other tests: the browser tests then fail in CI (CI set)
# and are skipped elsewhere, saying why.
if ! command -v chromedriver >/dev/null && [ "$(id -u)" = 0 ]; then
    { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
        chromium chromium-driver >/dev/null; } || echo "warning: chromium and chromium-driver could not be installed" >&2
fi
if ! "$venv/bin/python" -c "import selenium, axe_selenium_python" 2>/dev/null; then
    "$venv/bin/pip" install --quiet "selenium==4.40.0" "axe-selenium-python==2.1.6"
fi
export AIMATRIX_PYTHON="$venv/bin/python"
# The Kafka pipeline test starts a real Apache Kafka broker with ../shared/services/kafka-broker.sh
# (java >= 17; its jars are fetched once with mvn from Maven Central into ~/.cache/aimatrix-kafka).
# Builds into the same target directory as `cargo run` (./target), so the README's two
# commands build once; CI points CARGO_TARGET_DIR elsewhere to reuse a build.
cargo test --workspace --all-targets "$@"
