#!/usr/bin/env bash
# Builds the container image (deploy/Dockerfile) and checks it as a user would: a container
# started with deploy/compose's configuration (a user with a token) turns healthy (its
# HEALTHCHECK, `aimatrix health`) and answers SQL through the CLI inside it. Needs a running
# container engine with docker's CLI (Docker, or podman's docker alias):
#
#   scripts/image.sh [TAG]     # default aimatrix:dev
set -euo pipefail
cd "$(dirname "$0")/.."
tag="${1:-aimatrix:dev}"
if ! docker info >/dev/null 2>&1; then
    echo "no container engine answers (docker info fails): the image cannot be built on this machine" >&2
    exit 1
fi
docker build -f deploy/Dockerfile -t "$tag" .
name="aimatrix-image-check-$$"
docker run -d --name "$name" \
    -v "$PWD/deploy/compose/aimatrix.toml:/etc/aimatrix/aimatrix.toml:ro" \
    "$tag" serve --config /etc/aimatrix/aimatrix.toml --data-dir /var/lib/aimatrix/data >/dev/null
trap 'docker rm -f "$name" >/dev/null' EXIT
status=starting
for _ in $(seq 90); do
    status="$(docker inspect -f '{{.State.Health.Status}}' "$name")"
    [ "$status" = healthy ] && break
    sleep 2
done
if [ "$status" != healthy ]; then
    docker logs "$name" >&2
    echo "$tag: the container is $status, not healthy" >&2
    exit 1
fi
docker exec -e AIMATRIX_TOKEN=amx_compose_dev_token "$name" aimatrix sql "SELECT count(*) AS spans FROM spans"
echo "$tag: built; the container is healthy and answers SQL"
