#!/usr/bin/env bash
# The chart's checks (make chart-test): helm lint --strict, helm template with every values file
# in helm/bellhop/ci/, each rendering validated against the Kubernetes schemas of two versions
# (kubernetes-validate --strict) and the Prometheus Operator's (ServiceMonitor, PrometheusRule),
# values the schema must refuse, and helm/test_chart.py's assertions on the rendered objects.
# Tools are installed by deploy/tools.sh into .tools/ on first use.
set -euo pipefail

cd "$(dirname "$0")/.."
deploy/tools.sh helm kubernetes-validate pyyaml prometheus k8s-models
HELM="$PWD/.tools/bin/helm"
CHART=helm/bellhop
KUBE_VERSIONS=(1.30.0 1.35.0)
OUT="$(mktemp -d /tmp/bellhop-chart.XXXXXX)"
trap 'rm -rf "$OUT"' EXIT
fail=0
check() { # description command...
  local what="$1"; shift
  if "$@" >"$OUT/last.log" 2>&1; then
    echo "ok: $what"
  else
    echo "FAILED: $what"; sed 's/^/    /' "$OUT/last.log" | tail -30; fail=1
  fi
}
# helm warns about the symlink files/alerts.yml -> deploy/prometheus/alerts.yml; that is intended.
quiet_helm() { "$HELM" "$@" 2> >(grep -v 'found symbolic link in path' >&2); }

values=("$CHART"/ci/*-values.yaml)
for f in "${values[@]}"; do
  name="$(basename "$f" -values.yaml)"
  check "helm lint --strict -f $f" quiet_helm lint --strict "$CHART" -f "$f"
  if quiet_helm template bellhop "$CHART" --namespace hotel -f "$f" >"$OUT/$name.yaml" 2>"$OUT/$name.err"; then
    echo "ok: helm template -f $f ($(grep -c '^kind:' "$OUT/$name.yaml") objects)"
  else
    echo "FAILED: helm template -f $f"; cat "$OUT/$name.err"; fail=1; continue
  fi
  for k in "${KUBE_VERSIONS[@]}"; do
    # Only the Prometheus Operator's kinds may lack a Kubernetes schema (they are checked below).
    check "kubernetes-validate --strict -k $k ($name)" bash -c '
      out="$(kubernetes-validate --strict -k "$1" "$2" 2>&1)" || { echo "$out"; exit 1; }
      missing="$(echo "$out" | grep "Couldn'"'"'t find schema" | grep -v "api version monitoring.coreos.com/v1" || true)"
      [ -z "$missing" ] || { echo "$missing"; exit 1; }' _ "$k" "$OUT/$name.yaml"
  done
  check "Prometheus Operator schemas ($name)" node deploy/checks/validate-monitoring.mjs "$OUT/$name.yaml"
done

# Values the schema (or the templates) must refuse, each with the reason it must give.
refuse() { # expected-message --set...
  local want="$1"; shift
  if out="$(quiet_helm template bellhop "$CHART" "$@" 2>&1)"; then
    echo "FAILED: helm template $* was accepted"; fail=1
  elif ! grep -qF -- "$want" <<<"$out"; then
    echo "FAILED: helm template $* refused without \"$want\":"; echo "$out" | sed 's/^/    /' | tail -8; fail=1
  else
    echo "ok: refused $* ($want)"
  fi
}
min=(-f "$CHART/ci/minimal-values.yaml")
refuse "redis.urlSecret.name" # no Redis named at all
refuse "replicaCount" "${min[@]}" --set replicaCount=0
refuse "wsPort" "${min[@]}" --set config.wsPort=70000
refuse "wsPort" "${min[@]}" --set-string config.wsPort=abc
refuse "drainSeconds" "${min[@]}" --set config.drainSeconds=-1
refuse "wsPath" "${min[@]}" --set config.wsPath=/api/ws
refuse "mode" "${min[@]}" --set redis.mode=sentinel
refuse "replicaCount" --set redis.mode=embedded --set replicaCount=3
refuse "secretName" "${min[@]}" --set tls.enabled=true
refuse "minVersion" "${min[@]}" --set tls.minVersion=1.1
refuse "secret" "${min[@]}" --set jwt.secret=short
refuse "Additional property" "${min[@]}" --set config.maxConnection=5
refuse "Additional property" "${min[@]}" --set typo=1
refuse "allowedOrigins" "${min[@]}" --set 'config.allowedOrigins[0]=app.hotel.example'
refuse "pullPolicy" "${min[@]}" --set image.pullPolicy=Sometimes
refuse "must differ" "${min[@]}" --set config.metricsPort=3001

check "chart assertions: $(python3 helm/test_chart.py "$OUT" 2>&1 | tail -1)" python3 helm/test_chart.py "$OUT"

if [ "$fail" != 0 ]; then echo "chart checks FAILED"; exit 1; fi
echo "chart checks passed (${#values[@]} values files, Kubernetes ${KUBE_VERSIONS[*]})"
