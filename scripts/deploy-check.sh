#!/usr/bin/env bash
# Checks deploy/: yamllint over it, the Kubernetes manifests against the Kubernetes API's
# schemas (kubernetes-validate, offline, strict: no unknown field), and every AIMATRIX__ setting
# they and the compose file name against the server's configuration keys
# (scripts/deploy_check.py). The Helm chart is linted (`helm lint --strict`) and rendered with
# each of its ci/*-values.yaml, and each rendering is checked the same way. yamllint and
# kubernetes-validate come from PyPI, in the venv the tests use (outside the clone); helm is
# the one on PATH, or else built once with Go (`go install`, into /var/tmp/aimatrix-tools);
# without either the chart is not rendered, which is said. The image itself is built by
# scripts/image.sh where a container engine runs.
set -euo pipefail
cd "$(dirname "$0")/.."
venv="${AIMATRIX_VENV:-/var/tmp/aimatrix-venv}"
[ -x "$venv/bin/pip" ] || python3 -m venv "$venv"
if [ ! -x "$venv/bin/yamllint" ] || [ ! -x "$venv/bin/kubernetes-validate" ]; then
    "$venv/bin/pip" install --quiet "yamllint==1.38.0" "kubernetes-validate==1.37.0"
fi
"$venv/bin/yamllint" --strict deploy/ .yamllint.yaml
"$venv/bin/kubernetes-validate" --strict --quiet deploy/k8s/*.yaml

tools="${AIMATRIX_TOOLS:-/var/tmp/aimatrix-tools}"
helm="$(command -v helm || true)"
if [ -z "$helm" ] && [ -x "$tools/helm" ]; then
    helm="$tools/helm"
fi
if [ -z "$helm" ] && command -v go >/dev/null 2>&1; then
    echo "building helm v4.3.2 with go (once, into $tools)"
    if GOBIN="$tools" GOFLAGS=-buildvcs=false go install helm.sh/helm/v4/cmd/helm@v4.3.2; then
        helm="$tools/helm"
    else
        echo "helm could not be built (no Go module proxy?)"
    fi
fi
rendered=()
if [ -n "$helm" ]; then
    chart=deploy/helm/aimatrix
    out="$(mktemp -d)"
    trap 'rm -rf "$out"' EXIT
    for values in "$chart"/ci/*-values.yaml; do
        "$helm" lint --strict --quiet "$chart" -f "$values"
        name="$(basename "$values" .yaml)"
        # Each under a release name of its own (default, tls, …): the objects' names vary.
        "$helm" template "${name%-values}" "$chart" -f "$values" > "$out/$name.yaml"
        # (Lines as long as the values make them: a password verifier is 150 characters.)
        "$venv/bin/yamllint" --strict -d "{extends: default, rules: {line-length: disable, document-start: disable}}" \
            "$out/$name.yaml"
        "$venv/bin/kubernetes-validate" --strict --quiet "$out/$name.yaml"
        rendered+=("$out/$name.yaml")
    done
else
    echo "no helm (and none built): the Helm chart is not rendered here (install helm to check it)"
fi
"$venv/bin/python" scripts/deploy_check.py "${rendered[@]}"
echo "deploy/: yamllint, Kubernetes schemas and configuration keys pass${helm:+ (the Helm chart rendered with ${#rendered[@]} value files)}"
