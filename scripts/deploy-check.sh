#!/usr/bin/env bash
# Checks deploy/: yamllint over it, the Kubernetes manifests against the Kubernetes API's
# schemas (kubernetes-validate, offline, strict: no unknown field), and every AIMATRIX__ setting
# they and the compose file name against the server's configuration keys
# (scripts/deploy_check.py). yamllint and kubernetes-validate come from PyPI, in the venv the
# tests use (outside the clone). The image itself is built by scripts/image.sh where a
# container engine runs.
set -euo pipefail
cd "$(dirname "$0")/.."
venv="${AIMATRIX_VENV:-/var/tmp/aimatrix-venv}"
[ -x "$venv/bin/pip" ] || python3 -m venv "$venv"
if [ ! -x "$venv/bin/yamllint" ] || [ ! -x "$venv/bin/kubernetes-validate" ]; then
    "$venv/bin/pip" install --quiet "yamllint==1.38.0" "kubernetes-validate==1.37.0"
fi
"$venv/bin/yamllint" --strict deploy/ .yamllint.yaml
"$venv/bin/kubernetes-validate" --strict --quiet deploy/k8s/*.yaml
"$venv/bin/python" scripts/deploy_check.py
echo "deploy/: yamllint, Kubernetes schemas and configuration keys pass"
