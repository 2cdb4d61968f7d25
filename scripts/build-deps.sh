#!/usr/bin/env bash
# librdkafka (the Kafka client) is compiled from source by the rdkafka-sys crate: it needs a C
# compiler, make and zlib's headers besides the Rust toolchain; the pgwire test runs psql
# (postgresql-client) as a user would. Installs what is missing with apt-get (Debian/Ubuntu), or
# says what to install elsewhere.
set -euo pipefail
missing=()
command -v cc >/dev/null 2>&1 || missing+=(gcc)
command -v make >/dev/null 2>&1 || missing+=(make)
[ -e /usr/include/zlib.h ] || missing+=(zlib1g-dev)
command -v psql >/dev/null 2>&1 || missing+=(postgresql-client)
[ "${#missing[@]}" -eq 0 ] && exit 0
if command -v apt-get >/dev/null 2>&1; then
    sudo=""
    [ "$(id -u)" -eq 0 ] || sudo="sudo"
    echo "installing ${missing[*]} (to build librdkafka; psql for the pgwire test)" >&2
    $sudo apt-get update -qq
    $sudo apt-get install -y -qq "${missing[@]}"
else
    echo "install ${missing[*]} (a C compiler, make and zlib's headers build librdkafka; psql runs in the pgwire test)" >&2
    exit 1
fi
