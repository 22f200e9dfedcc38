#!/usr/bin/env bash
# Regenerates k8s/quickp2p.yaml from the chart: `helm template` with the chart's defaults, except
# the two Secrets whose content is random (TURN secret and admin tokens, gateway certificate),
# which plain-manifest users make themselves (k8s/README.md says how): k8s/render-values.yaml.
#
#   scripts/render-k8s.sh            write k8s/quickp2p.yaml
#   scripts/render-k8s.sh --stdout   print it instead (scripts/check-k8s.sh compares the two)
set -euo pipefail
# shellcheck source=scripts/k8s-tools.sh
source "$(dirname "$0")/k8s-tools.sh"
k8s_tools_install >&2
cd "$QP_ROOT"

render() {
  echo "# Rendered from helm/quickp2p by scripts/render-k8s.sh: do not edit (CI fails on drift)."
  echo "# helm template quickp2p helm/quickp2p --namespace quickp2p --kube-version $KUBE_VERSION -f k8s/render-values.yaml"
  "$HELM" template quickp2p helm/quickp2p --namespace quickp2p --kube-version "$KUBE_VERSION" \
    -f k8s/render-values.yaml
}

if [[ ${1:-} == --stdout ]]; then
  render
else
  render >k8s/quickp2p.yaml
  echo "wrote k8s/quickp2p.yaml ($(grep -c '^kind:' k8s/quickp2p.yaml) objects)"
fi
