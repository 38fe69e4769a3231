#!/usr/bin/env bash
# Download the released binaries of the e2e tools that have one (RELEASED_TOOLS in versions.env)
# at the versions pinned there, so that `make e2e` builds only BUILT_TOOLS and the project's own
# programs (needs internet; the offline path is build.sh). Usage:
#   bash e2e/toolchain/install-released.sh DIR
# leaves the Kubernetes binaries, etcd, KWOK, CoreDNS and kube-router in DIR (point
# KUBEBUILDER_ASSETS at it) and the Pulumi CLI with its language hosts in DIR/pulumi (put it first
# on PATH), and installs the kubernetes provider plugin with `pulumi plugin install`. Checksums are
# verified where the project publishes them.
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
# shellcheck source=/dev/null
source "$here/versions.env"
dest="${1:?usage: install-released.sh DIR}"
mkdir -p "$dest"
dest="$(cd "$dest" && pwd)"
arch=amd64
tmp="$(mktemp -d)"
trap 'rm -rf "$tmp"' EXIT

fetch() { curl -fsSL --retry 3 -o "$2" "$1"; }

# fetch_listed URL SUMS_URL: URL's file into $tmp, checked against its line in the release's
# checksum list at SUMS_URL.
fetch_listed() {
  local file
  file="$(basename "$1")"
  fetch "$1" "$tmp/$file"
  fetch "$2" "$tmp/$file.sums"
  (cd "$tmp" && grep " $file\$" "$file.sums" | sha256sum --check --quiet)
}

# One function a tool, named as build.sh names it (`-` as `_`): release_TOOL installs its binaries.

# Pulumi: the CLI archive (with pulumi-language-python beside the CLI) and its checksums.
release_pulumi() {
  local pv="${PULUMI_VERSION#v}" archive
  archive="pulumi-v$pv-linux-x64.tar.gz"
  fetch_listed "https://get.pulumi.com/releases/sdk/$archive" \
    "https://get.pulumi.com/releases/sdk/pulumi-$pv-checksums.txt"
  rm -rf "$dest/pulumi"
  tar -xzf "$tmp/$archive" -C "$dest"
}

# The Python language host ships in the CLI's archive.
release_langhost() {
  [[ -x "$dest/pulumi/pulumi-language-python" && -f "$dest/pulumi/pulumi-language-python-exec" ]] \
    || { echo "install-released.sh: the Pulumi archive has no pulumi-language-python" >&2; exit 1; }
}

release_provider() {
  "$dest/pulumi/pulumi" plugin install resource kubernetes "$PULUMI_KUBERNETES_VERSION"
}

# etcd: the release archive and its SHA256SUMS.
release_etcd() {
  local etcd="etcd-$ETCD_VERSION-linux-$arch"
  local releases="https://github.com/etcd-io/etcd/releases/download/$ETCD_VERSION"
  fetch_listed "$releases/$etcd.tar.gz" "$releases/SHA256SUMS"
  tar -xzf "$tmp/$etcd.tar.gz" -C "$tmp"
  install -m 0755 "$tmp/$etcd/etcd" "$dest/etcd"
}

release_kwok() {
  local name
  for name in kwok kwokctl; do
    fetch "https://github.com/kubernetes-sigs/kwok/releases/download/$KWOK_VERSION/$name-linux-$arch" "$tmp/$name"
    install -m 0755 "$tmp/$name" "$dest/$name"
  done
}

# kubernetes NAME...: each Kubernetes binary and its published .sha256.
kubernetes() {
  local name url
  for name in "$@"; do
    url="https://dl.k8s.io/release/$KUBE_VERSION/bin/linux/$arch/$name"
    fetch "$url" "$tmp/$name"
    fetch "$url.sha256" "$tmp/$name.sha256"
    echo "$(cat "$tmp/$name.sha256")  $tmp/$name" | sha256sum --check --quiet
    install -m 0755 "$tmp/$name" "$dest/$name"
  done
}
release_kube() { kubernetes kube-apiserver kube-controller-manager kube-scheduler; }
release_kubectl() { kubernetes kubectl; }
release_kubelet() { kubernetes kubelet kube-proxy; }

# CoreDNS and kube-router (the real node's DNS and NetworkPolicy enforcer) with their checksums.
release_coredns() {
  local coredns="coredns_${COREDNS_VERSION#v}_linux_$arch.tgz"
  local releases="https://github.com/coredns/coredns/releases/download/$COREDNS_VERSION"
  fetch "$releases/$coredns" "$tmp/$coredns"
  fetch "$releases/$coredns.sha256" "$tmp/coredns.sum"
  echo "$(cut -d' ' -f1 "$tmp/coredns.sum")  $tmp/$coredns" | sha256sum --check --quiet
  tar -xzf "$tmp/$coredns" -C "$tmp"
  install -m 0755 "$tmp/coredns" "$dest/coredns"
}

release_kube_router() {
  local kv="${KUBE_ROUTER_VERSION#v}"
  local router="kube-router_${kv}_linux_$arch.tar.gz"
  local releases="https://github.com/cloudnativelabs/kube-router/releases/download/$KUBE_ROUTER_VERSION"
  fetch_listed "$releases/$router" "$releases/kube-router_${kv}_checksums.txt"
  mkdir -p "$tmp/router" && tar -xzf "$tmp/$router" -C "$tmp/router"
  install -m 0755 "$tmp/router/kube-router" "$dest/kube-router"
}

read -ra tools <<<"$RELEASED_TOOLS"
for tool in "${tools[@]}"; do
  if ! declare -F "release_${tool//-/_}" >/dev/null; then
    echo "install-released.sh: versions.env lists $tool in RELEASED_TOOLS, but no release of it is known here" >&2
    exit 2
  fi
  "release_${tool//-/_}"
done

echo "KUBEBUILDER_ASSETS=$dest"
echo "PATH=$dest/pulumi:\$PATH"
