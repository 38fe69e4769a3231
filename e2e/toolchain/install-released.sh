#!/usr/bin/env bash
# Download the released binaries of every e2e tool at the versions pinned in versions.env, so that
# `make e2e` builds nothing (needs internet; the offline path is build.sh). Usage:
#   bash e2e/toolchain/install-released.sh DIR
# leaves the Kubernetes binaries, etcd and KWOK in DIR (point KUBEBUILDER_ASSETS at it) and the
# Pulumi CLI with its language hosts in DIR/pulumi (put it first on PATH), and installs the
# kubernetes provider plugin with `pulumi plugin install`. Checksums are verified where the
# project publishes them.
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

# Kubernetes: each binary and its published .sha256.
for name in kube-apiserver kube-controller-manager kube-scheduler kubectl kubelet kube-proxy; do
  url="https://dl.k8s.io/release/$KUBE_VERSION/bin/linux/$arch/$name"
  fetch "$url" "$tmp/$name"
  fetch "$url.sha256" "$tmp/$name.sha256"
  echo "$(cat "$tmp/$name.sha256")  $tmp/$name" | sha256sum --check --quiet
  install -m 0755 "$tmp/$name" "$dest/$name"
done

# etcd: the release archive and its SHA256SUMS.
etcd="etcd-$ETCD_VERSION-linux-$arch"
releases="https://github.com/etcd-io/etcd/releases/download/$ETCD_VERSION"
fetch_listed "$releases/$etcd.tar.gz" "$releases/SHA256SUMS"
tar -xzf "$tmp/$etcd.tar.gz" -C "$tmp"
install -m 0755 "$tmp/$etcd/etcd" "$dest/etcd"

# KWOK: kwok and kwokctl.
for name in kwok kwokctl; do
  fetch "https://github.com/kubernetes-sigs/kwok/releases/download/$KWOK_VERSION/$name-linux-$arch" "$tmp/$name"
  install -m 0755 "$tmp/$name" "$dest/$name"
done

# CoreDNS and kube-router (the real node's DNS and NetworkPolicy enforcer) with their checksums.
cv="${COREDNS_VERSION#v}"
coredns="coredns_${cv}_linux_$arch.tgz"
fetch "https://github.com/coredns/coredns/releases/download/$COREDNS_VERSION/$coredns" "$tmp/$coredns"
fetch "https://github.com/coredns/coredns/releases/download/$COREDNS_VERSION/$coredns.sha256" "$tmp/coredns.sum"
echo "$(cut -d' ' -f1 "$tmp/coredns.sum")  $tmp/$coredns" | sha256sum --check --quiet
tar -xzf "$tmp/$coredns" -C "$tmp"
install -m 0755 "$tmp/coredns" "$dest/coredns"
kv="${KUBE_ROUTER_VERSION#v}"
router="kube-router_${kv}_linux_$arch.tar.gz"
releases="https://github.com/cloudnativelabs/kube-router/releases/download/$KUBE_ROUTER_VERSION"
fetch_listed "$releases/$router" "$releases/kube-router_${kv}_checksums.txt"
mkdir -p "$tmp/router" && tar -xzf "$tmp/$router" -C "$tmp/router"
install -m 0755 "$tmp/router/kube-router" "$dest/kube-router"

# Pulumi: the CLI archive (with pulumi-language-python beside the CLI) and its checksums.
pv="${PULUMI_VERSION#v}"
archive="pulumi-v$pv-linux-x64.tar.gz"
fetch_listed "https://get.pulumi.com/releases/sdk/$archive" \
  "https://get.pulumi.com/releases/sdk/pulumi-$pv-checksums.txt"
rm -rf "$dest/pulumi"
tar -xzf "$tmp/$archive" -C "$dest"
"$dest/pulumi/pulumi" plugin install resource kubernetes "$PULUMI_KUBERNETES_VERSION"

echo "KUBEBUILDER_ASSETS=$dest"
echo "PATH=$dest/pulumi:\$PATH"
