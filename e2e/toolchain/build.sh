#!/usr/bin/env bash
# The real-engine e2e toolchain: every binary the suite runs, in one bin folder
#   ${MLSTACK_E2E_CACHE:-$HOME/.cache/mlstack-e2e}/<hash of versions.env>/bin
# Prints that folder on its last line.
#
# What is already installed at the pinned version is used as it is (linked into the bin folder);
# only what is missing is built from Go modules:
#   pulumi, pulumi-language-python(-exec)   the `pulumi` on PATH when `pulumi version` prints
#                                           PULUMI_VERSION, and the language host beside it
#   pulumi-resource-kubernetes              on PATH, or the plugin Pulumi installed
#                                           ($PULUMI_HOME/plugins/resource-kubernetes-v<version>)
#   kube-*, kubectl, etcd, kwok, kwokctl    in $KUBEBUILDER_ASSETS (the envtest convention: a
#                                           folder of Kubernetes test binaries), at the pinned versions
# MLSTACK_E2E_NO_BUILD=1 turns a missing binary into an error instead of a build.
#
# Every version comes from versions.env (the one place they are pinned). The wrapper modules are
# generated here from those versions (go.mod + a tools file); no upstream source is committed.
# The one Go main of our own is e2e/toolchain/langhost (see its README note in e2e/README.md).
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
# shellcheck source=/dev/null
source "$here/versions.env"

cache_root="${MLSTACK_E2E_CACHE:-$HOME/.cache/mlstack-e2e}"
vhash="$(sha256sum "$here/versions.env" | cut -c1-12)"
top="$cache_root/$vhash"
bin="$top/bin"
work="$top/work"
mkdir -p "$bin" "$work"

export GOFLAGS="-mod=mod -trimpath"
export GOTOOLCHAIN="${GOTOOLCHAIN:-local}"
export CGO_ENABLED=0
ldstrip="-s -w"

log() { printf '[e2e-toolchain] %s\n' "$*" >&2; }
have() { for f in "$@"; do [[ -x "$bin/$f" ]] || return 1; done; }

# --- Installed binaries -------------------------------------------------------------------------
# The version a binary reports, as the pins spell it (v1.34.4, v3.6.16, v0.8.0, v3.274.0).
reported_version() {
  local out
  case "$(basename "$1")" in
    pulumi) out="$("$1" version 2>/dev/null)" ;;
    kubectl) out="$("$1" version --client 2>/dev/null)" ;;
    *) out="$("$1" --version 2>/dev/null)" ;;
  esac
  grep -oE 'v?[0-9]+\.[0-9]+\.[0-9]+' <<<"$out" | head -1 | sed -E 's/^v?/v/'
}

# adopt NAME PATH VERSION: link an installed binary into the bin folder if it reports VERSION.
adopt() {
  local name="$1" path="$2" version="$3"
  [[ -x "$path" && ! "$path" -ef "$bin/$name" ]] || return 1
  [[ "$(reported_version "$path")" == "v${version#v}" ]] || {
    log "ignoring $path: $(reported_version "$path" || true), not v${version#v}"
    return 1
  }
  ln -sfn "$path" "$bin/$name"
  log "$name: using the installed $path"
}

# Links from an earlier run whose target is gone or changed are dropped, so the check runs again.
forget_stale_links() {
  local link
  for link in "$bin"/*; do
    [[ -L "$link" ]] && rm -f "$link"
  done
  return 0
}

adopt_installed() {
  forget_stale_links
  local p dir
  if p="$(command -v pulumi)" && adopt pulumi "$p" "$PULUMI_VERSION"; then
    dir="$(dirname "$(readlink -f "$p")")"
    # A released CLI ships its Python language host beside it.
    if [[ -x "$dir/pulumi-language-python" && -f "$dir/pulumi-language-python-exec" ]]; then
      ln -sfn "$dir/pulumi-language-python" "$bin/pulumi-language-python"
      ln -sfn "$dir/pulumi-language-python-exec" "$bin/pulumi-language-python-exec"
    fi
  fi
  local plugin="${PULUMI_HOME:-$HOME/.pulumi}/plugins/resource-kubernetes-v$PULUMI_KUBERNETES_VERSION"
  if [[ -x "$plugin/pulumi-resource-kubernetes" ]]; then
    ln -sfn "$plugin/pulumi-resource-kubernetes" "$bin/pulumi-resource-kubernetes"
    log "pulumi-resource-kubernetes: using the installed plugin in $plugin"
  elif p="$(command -v pulumi-resource-kubernetes)"; then
    adopt pulumi-resource-kubernetes "$p" "$PULUMI_KUBERNETES_VERSION" || true
  fi
  [[ -n "${KUBEBUILDER_ASSETS:-}" ]] || return 0
  [[ -d "$KUBEBUILDER_ASSETS" ]] || { log "KUBEBUILDER_ASSETS=$KUBEBUILDER_ASSETS is not a folder"; exit 1; }
  local name
  for name in kube-apiserver kube-controller-manager kube-scheduler kubectl kubelet kube-proxy; do
    adopt "$name" "$KUBEBUILDER_ASSETS/$name" "$KUBE_VERSION" || true
  done
  adopt etcd "$KUBEBUILDER_ASSETS/etcd" "$ETCD_VERSION" || true
  adopt kwok "$KUBEBUILDER_ASSETS/kwok" "$KWOK_VERSION" || true
  adopt kwokctl "$KUBEBUILDER_ASSETS/kwokctl" "$KWOK_VERSION" || true
}

# Called before any Go build: building needs Go, and may be refused on purpose.
need_go() {
  if [[ -n "${MLSTACK_E2E_NO_BUILD:-}" ]]; then
    log "$1 is missing and MLSTACK_E2E_NO_BUILD is set: install it at the pinned version" \
        "(e2e/toolchain/versions.env): see e2e/README.md"
    exit 1
  fi
  command -v go >/dev/null || {
    log "$1 is missing and must be built from Go modules: Go >= 1.26 is needed on PATH" \
        "(or install $1 at the pinned version: see e2e/README.md)"
    exit 1
  }
}

# --- Pulumi CLI ----------------------------------------------------------------------------------
build_pulumi() {
  have pulumi && return 0
  need_go pulumi
  log "building pulumi $PULUMI_VERSION"
  local d="$work/pulumi"
  rm -rf "$d" && mkdir -p "$d"
  local pkgmod
  pkgmod="$(cd "$d" && go mod download -json "github.com/pulumi/pulumi/pkg/v3@$PULUMI_VERSION" \
    | python3 -c 'import json,sys; print(json.load(sys.stdin)["GoMod"])')"
  {
    echo "module mlstack.local/e2e/pulumi"
    grep -E '^go [0-9]' "$pkgmod"
    echo "require ("
    echo "  github.com/pulumi/pulumi/pkg/v3 $PULUMI_VERSION"
    echo "  github.com/pulumi/pulumi/sdk/v3 $PULUMI_VERSION"
    echo ")"
    # Repeat the non-local replaces of pkg/go.mod (a local ../sdk one becomes the require above).
    grep -E '^replace ' "$pkgmod" | grep -vE '=> \.\.?/' || true
  } >"$d/go.mod"
  (cd "$d" && go build -ldflags "$ldstrip \
      -X github.com/pulumi/pulumi/sdk/v3/go/common/version.Version=$PULUMI_VERSION" \
      -o "$bin/pulumi.tmp" github.com/pulumi/pulumi/pkg/v3/cmd/pulumi)
  mv "$bin/pulumi.tmp" "$bin/pulumi"
}

# --- Python language host (our own small main: the upstream one is not on the module proxy) -----
build_langhost() {
  local src="$here/langhost"
  local stamp
  stamp="$(cat "$src/main.go" "$here/versions.env" | sha256sum | cut -c1-16)"
  if have pulumi-language-python pulumi-language-python-exec \
     && { [[ -L "$bin/pulumi-language-python" ]] \
       || [[ "$(cat "$bin/.langhost.stamp" 2>/dev/null)" == "$stamp" ]]; }; then
    return 0
  fi
  need_go pulumi-language-python
  log "building pulumi-language-python (mlstack's minimal host) against sdk $PULUMI_VERSION"
  local d="$work/langhost"
  rm -rf "$d" && mkdir -p "$d"
  cp "$src/main.go" "$d/main.go"
  local sdkmod sdkdir
  sdkmod="$(cd "$d" && go mod download -json "github.com/pulumi/pulumi/sdk/v3@$PULUMI_VERSION")"
  sdkdir="$(python3 -c 'import json,sys; print(json.loads(sys.argv[1])["Dir"])' "$sdkmod")"
  {
    echo "module mlstack.local/e2e/langhost"
    grep -E '^go [0-9]' "$sdkdir/go.mod"
    echo "require github.com/pulumi/pulumi/sdk/v3 $PULUMI_VERSION"
  } >"$d/go.mod"
  (cd "$d" && go build -ldflags "$ldstrip" -o "$bin/pulumi-language-python.tmp" .)
  mv "$bin/pulumi-language-python.tmp" "$bin/pulumi-language-python"
  # The exec shim is a Python script shipped in the sdk/v3 module; it must sit next to the host.
  install -m 0755 "$sdkdir/python/cmd/pulumi-language-python-exec" "$bin/pulumi-language-python-exec"
  echo "$stamp" >"$bin/.langhost.stamp"
}

# --- pulumi-kubernetes provider -----------------------------------------------------------------
build_provider() {
  have pulumi-resource-kubernetes && return 0
  need_go pulumi-resource-kubernetes
  log "building pulumi-resource-kubernetes $PULUMI_KUBERNETES_VERSION" \
      "($PULUMI_KUBERNETES_PROVIDER_MODULE_VERSION)"
  local d="$work/provider"
  rm -rf "$d" && mkdir -p "$d"
  local m="github.com/pulumi/pulumi-kubernetes/provider/v4"
  local info dir
  info="$(cd "$d" && go mod download -json "$m@$PULUMI_KUBERNETES_PROVIDER_MODULE_VERSION")"
  dir="$(python3 -c 'import json,sys; print(json.loads(sys.argv[1])["Dir"])' "$info")"
  {
    echo "module mlstack.local/e2e/provider"
    grep -E '^go [0-9]' "$dir/go.mod"
    echo "require $m $PULUMI_KUBERNETES_PROVIDER_MODULE_VERSION"
    grep -E '^replace ' "$dir/go.mod" | grep -vE '=> \.\.?/' || true
  } >"$d/go.mod"
  # main.go embeds schema-embed.json and terraform-mapping-embed.json, generated (not committed)
  # upstream by generate.go: a writable copy of the main package with both files (schema version
  # stamped, JSON compacted — what generate.go does).
  local cmd="$d/cmd"
  mkdir -p "$cmd"
  cp "$dir/cmd/pulumi-resource-kubernetes/main.go" "$cmd/"
  chmod u+w "$cmd/main.go"
  python3 - "$dir/cmd/pulumi-resource-kubernetes" "$cmd" "$PULUMI_KUBERNETES_VERSION" <<'PY'
import json, sys
src, dst, version = sys.argv[1:4]
schema = json.load(open(f"{src}/schema.json"))
schema["version"] = version
json.dump(schema, open(f"{dst}/schema-embed.json", "w"), separators=(",", ":"))
mapping = json.load(open(f"{src}/terraform-mapping.json"))
json.dump(mapping, open(f"{dst}/terraform-mapping-embed.json", "w"), separators=(",", ":"))
PY
  (cd "$d" && go build -ldflags "$ldstrip \
      -X $m/pkg/version.Version=$PULUMI_KUBERNETES_VERSION" \
      -o "$bin/pulumi-resource-kubernetes.tmp" ./cmd)
  mv "$bin/pulumi-resource-kubernetes.tmp" "$bin/pulumi-resource-kubernetes"
}

# --- etcd ---------------------------------------------------------------------------------------
build_etcd() {
  have etcd && return 0
  need_go etcd
  log "building etcd $ETCD_VERSION"
  local d="$work/etcd"
  rm -rf "$d" && mkdir -p "$d"
  local m="go.etcd.io/etcd/server/v3"
  local gomod
  gomod="$(cd "$d" && go mod download -json "$m@$ETCD_VERSION" \
    | python3 -c 'import json,sys; print(json.load(sys.stdin)["GoMod"])')"
  {
    echo "module mlstack.local/e2e/etcd"
    grep -E '^go [0-9]' "$gomod"
    echo "require $m $ETCD_VERSION"
  } >"$d/go.mod"
  (cd "$d" && go build -ldflags "$ldstrip" -o "$bin/etcd.tmp" "$m")
  mv "$bin/etcd.tmp" "$bin/etcd"
}

# --- KWOK ---------------------------------------------------------------------------------------
build_kwok() {
  have kwok kwokctl && return 0
  need_go "kwok and kwokctl"
  log "building kwok + kwokctl $KWOK_VERSION"
  local d="$work/kwok"
  rm -rf "$d" && mkdir -p "$d"
  local m="sigs.k8s.io/kwok"
  local gomod
  gomod="$(cd "$d" && go mod download -json "$m@$KWOK_VERSION" \
    | python3 -c 'import json,sys; print(json.load(sys.stdin)["GoMod"])')"
  {
    echo "module mlstack.local/e2e/kwok"
    grep -E '^go [0-9]' "$gomod"
    echo "require $m $KWOK_VERSION"
  } >"$d/go.mod"
  local name
  for name in kwok kwokctl; do
    have "$name" || (cd "$d" && go build -ldflags "$ldstrip -X $m/pkg/consts.Version=$KWOK_VERSION" \
      -o "$bin/$name" "$m/cmd/$name")
  done
}

# KWOK's default node and pod stages, copied from the kwok module at build time (a config that
# names any Stage replaces the defaults, and the harness adds a LoadBalancer Service stage).
install_stages() {
  local dst="$top/stages"
  [[ -s "$dst/pod-ready.yaml" ]] && return 0
  command -v go >/dev/null || { log "KWOK's stage files come from the kwok module: Go is needed to fetch it"; exit 1; }
  local d="$work/kwok-stages"
  mkdir -p "$d"
  [[ -f "$d/go.mod" ]] || echo "module mlstack.local/e2e/kwokstages" >"$d/go.mod"
  local dir
  dir="$(cd "$d" && go mod download -json "sigs.k8s.io/kwok@$KWOK_VERSION" \
    | python3 -c 'import json,sys; print(json.load(sys.stdin)["Dir"])')"
  mkdir -p "$dst.tmp"
  cp "$dir"/kustomize/stage/node/fast/node-initialize.yaml \
     "$dir"/kustomize/stage/node/heartbeat-with-lease/node-heartbeat-with-lease.yaml \
     "$dir"/kustomize/stage/pod/fast/pod-ready.yaml \
     "$dir"/kustomize/stage/pod/fast/pod-complete.yaml \
     "$dir"/kustomize/stage/pod/fast/pod-delete.yaml "$dst.tmp/"
  chmod u+w "$dst.tmp"/*.yaml
  rm -rf "$dst" && mv "$dst.tmp" "$dst"
}
build_stages() { install_stages; }

# --- Kubernetes control plane -------------------------------------------------------------------
# The wrapper module every Kubernetes binary is built from, and its version ldflags.
kube_module() {
  [[ -s "$work/kube/go.mod" && -s "$work/kube.ldflags" ]] && return 0
  local d="$work/kube"
  rm -rf "$d" && mkdir -p "$d"
  local gomod
  gomod="$(cd "$d" && go mod download -json "k8s.io/kubernetes@$KUBE_VERSION" \
    | python3 -c 'import json,sys; print(json.load(sys.stdin)["GoMod"])')"
  python3 - "$gomod" "$KUBE_VERSION" "$KUBE_STAGING_VERSION" >"$d/go.mod" <<'PY'
import re, sys
gomod, kube, staging = sys.argv[1:4]
text = open(gomod).read()
out = ["module mlstack.local/e2e/kube", ""]
out += re.findall(r"^go \S+$", text, re.M)
out += re.findall(r"^godebug\s*\([^)]*\)|^godebug \S+$", text, re.M)
out += ["", f"require k8s.io/kubernetes {kube}", ""]
# Every staging module (replaced by ./staging/src/... upstream) becomes its published release.
for mod in re.findall(r"^\s*(?:replace\s+)?(\S+)\s+=>\s+\./staging/\S+", text, re.M):
    out.append(f"replace {mod} => {mod} {staging}")
print("\n".join(out))
PY
  local major minor
  major="$(echo "$KUBE_VERSION" | sed -E 's/^v([0-9]+)\..*/\1/')"
  minor="$(echo "$KUBE_VERSION" | sed -E 's/^v[0-9]+\.([0-9]+)\..*/\1/')"
  local ld="$ldstrip"
  for p in k8s.io/component-base/version k8s.io/client-go/pkg/version; do
    ld+=" -X $p.gitVersion=$KUBE_VERSION -X $p.gitMajor=$major -X $p.gitMinor=$minor"
    ld+=" -X $p.gitTreeState=clean -X $p.buildDate=1970-01-01T00:00:00Z"
  done
  echo "$ld" >"$work/kube.ldflags"
}

# build_kube_binary NAME: k8s.io/kubernetes/cmd/NAME, stamped with the release.
build_kube_binary() {
  kube_module
  (cd "$work/kube" && go build -ldflags "$(cat "$work/kube.ldflags")" -o "$bin/$1.tmp" \
      "k8s.io/kubernetes/cmd/$1")
  mv "$bin/$1.tmp" "$bin/$1"
}

build_kube() {
  have kube-apiserver kube-controller-manager kube-scheduler && return 0
  need_go "the Kubernetes control plane"
  log "building kube-apiserver, kube-controller-manager, kube-scheduler $KUBE_VERSION"
  # Only the missing ones: an installed binary linked into $bin is never overwritten.
  local name
  for name in kube-apiserver kube-controller-manager kube-scheduler; do
    have "$name" || build_kube_binary "$name"
  done
}

# kubectl of the same release, so the suite needs no kubectl from the machine.
build_kubectl() {
  have kubectl && return 0
  need_go kubectl
  log "building kubectl $KUBE_VERSION"
  build_kube_binary kubectl
}

adopt_installed
want=("$@")
[[ ${#want[@]} -gt 0 ]] || want=(pulumi langhost provider etcd kwok stages kube kubectl)
for w in "${want[@]}"; do
  start=$SECONDS
  "build_$w"
  log "$w ready ($((SECONDS - start)) s)"
done
echo "$bin"
