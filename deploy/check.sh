#!/usr/bin/env bash
# Checks the deployment files with the tools that read them, not with our own parser:
#   - docker-compose.yml with `docker compose config` (Compose's own loader and the
#     compose-spec schema). Where no compose plugin is installed (no Docker on these
#     machines), the Compose CLI is built once from the Go module proxy into
#     .shadowline/tools/ (about 2 minutes on 2 cores; the build is cached).
#   - every Grafana dashboard under deploy/grafana/dashboards/ with
#     deploy/grafana/check, which decodes it strictly into the types Grafana's
#     dashboard schema generates (Grafana Foundation SDK) and runs the schema's checks.
#   - the Helm chart deploy/helm/shadowline with `helm lint` and `helm template` (Helm
#     built once from the Go module proxy), its output validated strictly against the
#     Kubernetes API schemas (kubernetes-validate, schemas in its wheel) and KEDA's
#     ScaledObject against KEDA's own CRD (from the Go module proxy).
# Needs Go (1.26+). Exits non-zero on the first file a tool refuses.
set -euo pipefail
cd "$(dirname "$0")/.."
COMPOSE_VERSION=v2.40.3
HELM_VERSION=v3.19.0
KEDA_VERSION=v2.17.2
TOOLS=$PWD/.shadowline/tools
mkdir -p "$TOOLS"

command -v go >/dev/null || { echo "deploy/check.sh needs Go on PATH (go.dev/dl)" >&2; exit 1; }
export GOFLAGS=-mod=mod

echo "-- grafana dashboards (schema check)"
(cd deploy/grafana/check && go build -o "$TOOLS/grafana-dashboard-check" .)
"$TOOLS/grafana-dashboard-check" deploy/grafana/dashboards/*.json

echo "-- docker-compose.yml (docker compose config)"
if docker compose version >/dev/null 2>&1; then
    compose=(docker compose)
else
    if [ ! -x "$TOOLS/docker-compose-$COMPOSE_VERSION" ]; then
        echo "no compose plugin here: building Compose $COMPOSE_VERSION from the Go module proxy"
        # Compose's go.mod has replace/exclude lines, so `go install pkg@version` refuses
        # it; build inside a copy of the module instead.
        src=$(go mod download -json "github.com/docker/compose/v2@$COMPOSE_VERSION" |
              sed -n 's/.*"Dir": "\(.*\)".*/\1/p')
        work=$(mktemp -d)
        cp -r "$src" "$work/compose" && chmod -R u+w "$work/compose"
        (cd "$work/compose" && go build -o "$TOOLS/docker-compose-$COMPOSE_VERSION" \
            -ldflags "-X github.com/docker/compose/v2/internal.Version=$COMPOSE_VERSION" ./cmd)
        rm -rf "$work"
    fi
    compose=("$TOOLS/docker-compose-$COMPOSE_VERSION")
fi
"${compose[@]}" -f docker-compose.yml config --quiet
services=$("${compose[@]}" -f docker-compose.yml config --services | tr '\n' ' ')
echo "docker-compose.yml: accepted by $("${compose[@]}" version --short 2>/dev/null || echo compose); services: $services"

echo "-- helm chart (helm lint, helm template, Kubernetes and KEDA schemas)"
if [ ! -x "$TOOLS/helm-$HELM_VERSION" ]; then
    echo "building Helm $HELM_VERSION from the Go module proxy"
    GOBIN="$TOOLS/helm-build" go install "helm.sh/helm/v3/cmd/helm@$HELM_VERSION"
    mv "$TOOLS/helm-build/helm" "$TOOLS/helm-$HELM_VERSION" && rm -rf "$TOOLS/helm-build"
fi
helm=("$TOOLS/helm-$HELM_VERSION")
keda_dir=$(go mod download -json "github.com/kedacore/keda/v2@$KEDA_VERSION" |
           sed -n 's/.*"Dir": "\(.*\)".*/\1/p')
crd="$keda_dir/config/crd/bases/keda.sh_scaledobjects.yaml"
chart=deploy/helm/shadowline
"${helm[@]}" lint --strict "$chart"
"${helm[@]}" lint --strict "$chart" --set proxy.enabled=true \
    --set components.worker.keda.enabled=true --set components.joiner.keda.enabled=true
PY=${PYTHON_FOR_CHECKS:-.venv/bin/python}
"${helm[@]}" template shadowline "$chart" | "$PY" deploy/helm/validate.py "$crd"
"${helm[@]}" template shadowline "$chart" --set proxy.enabled=true \
    --set components.worker.keda.enabled=true --set components.joiner.keda.enabled=true \
    --set components.sink.keda.enabled=true --set secretEnv.name=shadowline-secrets \
    --set secretFiles.name=kafka-tls | "$PY" deploy/helm/validate.py "$crd"
