#!/usr/bin/env bash
# A real Kubernetes control plane on loopback, for installing the chart in tests: etcd (Debian's
# etcd-server), kube-apiserver and kube-controller-manager 1.20.2 built from Debian bookworm's
# `kubernetes` source package (no registry has a prebuilt kube-apiserver), and a stand-in for a
# kubelet that marks the pods the controllers create as Running and Ready. No scheduler, no
# kubelet, no containers: it proves what the API server and the controllers do with the chart.
#
#   helm/apiserver.sh build        # once: the two binaries into the cache (~6 min on 2 cores)
#   helm/apiserver.sh up DIR       # starts everything in DIR, writes DIR/kubeconfig, waits
#   helm/apiserver.sh down DIR     # stops it
#
# Environment: BERTD_TOOLS (the cache; ~/.cache/bertd-tools). `build` installs golang-go, rsync
# and etcd-server with apt-get when they are missing (as root, as on CI).
set -euo pipefail
TOOLS=${BERTD_TOOLS:-$HOME/.cache/bertd-tools}
K8S=$TOOLS/kubernetes-1.20.2
SOURCE=kubernetes
HERE=$(cd "$(dirname "$0")" && pwd)

build() {
  if [ -x "$K8S/kube-apiserver" ] && [ -x "$K8S/kube-controller-manager" ]; then
    return
  fi
  mkdir -p "$TOOLS"
  exec 8> "$TOOLS/.apiserver.lock"
  flock 8
  if [ -x "$K8S/kube-apiserver" ] && [ -x "$K8S/kube-controller-manager" ]; then
    return
  fi
  local missing=()
  command -v go > /dev/null || missing+=(golang-go)
  command -v rsync > /dev/null || missing+=(rsync)
  command -v etcd > /dev/null || missing+=(etcd-server)
  if [ ${#missing[@]} -gt 0 ]; then
    # A machine whose package lists were never fetched needs them first.
    DEBIAN_FRONTEND=noninteractive apt-get install -y -q "${missing[@]}" > /dev/null 2>&1 \
      || { apt-get update -q > /dev/null && DEBIAN_FRONTEND=noninteractive apt-get install -y -q "${missing[@]}" > /dev/null; }
  fi
  # The source package, through a private apt configuration with a deb-src line for the
  # configured Debian mirror (the system's sources stay as they are).
  local apt=$TOOLS/apt work
  mkdir -p "$apt/lists/partial" "$apt/cache/archives/partial"
  local mirror
  # The first Debian archive the system uses (deb822 `URIs:` or one-line `deb` entries).
  mirror=$({
    grep -h '^URIs:' /etc/apt/sources.list.d/*.sources 2> /dev/null | awk '{print $2}'
    grep -h '^deb ' /etc/apt/sources.list 2> /dev/null | awk '{print $2}'
  } | grep -m1 '/debian/*$' || true)
  echo "deb-src ${mirror:-http://deb.debian.org/debian} bookworm main" > "$apt/sources.list"
  local opts=(-o "Dir::Etc::SourceList=$apt/sources.list" -o Dir::Etc::SourceParts=/dev/null
    -o "Dir::State::Lists=$apt/lists" -o "Dir::Cache=$apt/cache" -o APT::Sandbox::User=root)
  apt-get "${opts[@]}" update -q > /dev/null
  work=$(mktemp -d)
  (
    cd "$work"
    apt-get "${opts[@]}" source -q --download-only "$SOURCE" > /dev/null
    # apt checked the files against the signed archive index; dpkg-source's own signature check
    # has no keyring here and only warns.
    dpkg-source -x ./*.dsc src > /dev/null 2>&1
    cd src
    # As Debian's rules build it: a GOPATH pointing at the tree, no cgo. Without cargo's
    # OUT_DIR, which `cargo test` sets for the tests that run this and Kubernetes' Makefile takes
    # for its own output folder (`OUT_DIR ?= _output`).
    mkdir -p .go/src/k8s.io
    ln -s ../../.. .go/src/k8s.io/kubernetes
    env -u OUT_DIR GOPATH=$PWD/.go CGO_ENABLED=0 make WHAT="cmd/kube-apiserver cmd/kube-controller-manager" > build.log 2>&1 \
      || { tail -30 build.log >&2; exit 1; }
    mkdir -p "$K8S"
    install -m 755 _output/bin/kube-apiserver _output/bin/kube-controller-manager "$K8S/"
  )
  rm -rf "$work"
}

free_port() { python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'; }

# up DIR: etcd, the API server with a static token and a self-signed certificate, the
# controllers, and the kubelet stand-in; DIR/kubeconfig for kubectl and helm.
up() {
  local dir=$1 etcd_port peer_port port token
  build
  mkdir -p "$dir"
  etcd_port=$(free_port)
  peer_port=$(free_port)
  port=$(free_port)
  token=$(head -c 16 /dev/urandom | od -An -tx1 | tr -d ' \n')
  echo "$token,admin,admin,system:masters" > "$dir/tokens.csv"
  openssl genrsa -out "$dir/sa.key" 2048 2> /dev/null
  openssl rsa -in "$dir/sa.key" -pubout -out "$dir/sa.pub" 2> /dev/null
  etcd --data-dir "$dir/etcd" --listen-client-urls "http://127.0.0.1:$etcd_port" \
    --advertise-client-urls "http://127.0.0.1:$etcd_port" --listen-peer-urls "http://127.0.0.1:$peer_port" \
    > "$dir/etcd.log" 2>&1 &
  echo $! > "$dir/etcd.pid"
  "$K8S/kube-apiserver" --etcd-servers "http://127.0.0.1:$etcd_port" \
    --bind-address 127.0.0.1 --advertise-address 127.0.0.1 --secure-port "$port" --cert-dir "$dir/certs" \
    --token-auth-file "$dir/tokens.csv" --authorization-mode AlwaysAllow \
    --service-account-key-file "$dir/sa.pub" --service-account-signing-key-file "$dir/sa.key" \
    --service-account-issuer https://kubernetes.default.svc \
    --service-cluster-ip-range 10.96.0.0/16 > "$dir/apiserver.log" 2>&1 &
  echo $! > "$dir/apiserver.pid"
  cat > "$dir/kubeconfig" << EOF
apiVersion: v1
kind: Config
clusters: [{name: test, cluster: {server: "https://127.0.0.1:$port", insecure-skip-tls-verify: true}}]
users: [{name: admin, user: {token: "$token"}}]
contexts: [{name: test, context: {cluster: test, user: admin, namespace: default}}]
current-context: test
EOF
  local kubectl deadline
  kubectl="$("$HERE/tools.sh")/kubectl --kubeconfig $dir/kubeconfig"
  deadline=$((SECONDS + 60))
  until $kubectl get --raw /readyz > /dev/null 2>&1; do
    [ $SECONDS -lt $deadline ] || { tail -20 "$dir/apiserver.log" >&2; exit 1; }
    sleep 0.5
  done
  "$K8S/kube-controller-manager" --kubeconfig "$dir/kubeconfig" --leader-elect=false \
    --port 0 --secure-port 0 --service-account-private-key-file "$dir/sa.key" \
    --use-service-account-credentials=false > "$dir/controller-manager.log" 2>&1 &
  echo $! > "$dir/controller-manager.pid"
  "$HERE/apiserver.sh" kubelet "$dir" > "$dir/kubelet.log" 2>&1 &
  echo $! > "$dir/kubelet.pid"
  # The default namespace's service account, which the controllers make, shows they run.
  deadline=$((SECONDS + 60))
  until $kubectl get serviceaccount default > /dev/null 2>&1; do
    [ $SECONDS -lt $deadline ] || { tail -20 "$dir/controller-manager.log" >&2; exit 1; }
    sleep 0.5
  done
}

# kubelet DIR: marks every pod that is not yet Running as Running and Ready, twice a second.
kubelet() {
  local dir=$1 kubectl now
  kubectl="$("$HERE/tools.sh")/kubectl --kubeconfig $dir/kubeconfig"
  while true; do
    now=$(date -u +%FT%TZ)
    for pod in $($kubectl get pods -A --field-selector status.phase!=Running \
      -o jsonpath='{range .items[*]}{.metadata.namespace}/{.metadata.name}{" "}{end}' 2> /dev/null); do
      $kubectl -n "${pod%%/*}" patch pod "${pod#*/}" --subresource status --type merge -p \
        "{\"status\":{\"phase\":\"Running\",\"podIP\":\"10.244.0.1\",\"startTime\":\"$now\",\"conditions\":[{\"type\":\"Ready\",\"status\":\"True\",\"lastTransitionTime\":\"$now\"},{\"type\":\"ContainersReady\",\"status\":\"True\",\"lastTransitionTime\":\"$now\"},{\"type\":\"PodScheduled\",\"status\":\"True\",\"lastTransitionTime\":\"$now\"}]}}" \
        > /dev/null 2>&1 || true
    done
    sleep 0.5
  done
}

# Whether any of the processes still runs.
alive() {
  local pid
  for pid in "$@"; do
    kill -0 "$pid" 2> /dev/null && return 0
  done
  return 1
}

down() {
  local dir=$1 pids=() deadline
  for name in kubelet controller-manager apiserver etcd; do
    [ -f "$dir/$name.pid" ] && pids+=("$(cat "$dir/$name.pid")")
  done
  [ ${#pids[@]} -gt 0 ] || return 0
  kill "${pids[@]}" 2> /dev/null || true
  # The API server shuts down gracefully, which may take a while: 10 s, then SIGKILL.
  deadline=$((SECONDS + 10))
  while alive "${pids[@]}" && [ $SECONDS -lt $deadline ]; do
    sleep 0.2
  done
  kill -9 "${pids[@]}" 2> /dev/null || true
}

case "${1:-}" in
  build) build ;;
  up) up "$2" ;;
  down) down "$2" ;;
  kubelet) kubelet "$2" ;;
  *)
    echo "usage: $0 build | up DIR | down DIR" >&2
    exit 2
    ;;
esac
