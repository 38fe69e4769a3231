#!/usr/bin/env bash
# The real-engine e2e toolchain: every binary the suite runs, linked into one bin folder
#   ${MLSTACK_E2E_CACHE:-$HOME/.cache/mlstack-e2e}/<hash of versions.env>/bin
# Prints that bin folder on its last line.
#
# What is already installed at the pinned version is used as it is (linked into bin/):
#   pulumi, pulumi-language-python(-exec)   the `pulumi` on PATH when `pulumi version` prints
#                                           PULUMI_VERSION, and the language host beside it
#   pulumi-resource-kubernetes              the plugin Pulumi installed
#                                           ($PULUMI_HOME/plugins/resource-kubernetes-v<version>)
#   kube-*, kubectl, kubelet, etcd, kwok,   in $KUBEBUILDER_ASSETS (the envtest convention: a
#   kwokctl, coredns, kube-router,          folder of Kubernetes test binaries), each reporting
#   metrics-server, weed                    its pinned version (weed: the pin's commit)
# Only what is missing is built from Go modules. Each tool is built once into a folder of its own,
#   <cache>/tools/<tool>-<hash of the versions it uses, its source files and its build recipe>/
# and bin/ (stages/ for KWOK's stages) links to it: a version bump rebuilds only the tools that
# use that version, and checkouts with different pins share every tool they agree on.
# MLSTACK_E2E_NO_BUILD=1 turns a missing third-party binary into an error instead of a build;
# MLSTACK_E2E_NO_BUILD=released only a missing one of RELEASED_TOOLS (what install-released.sh
# downloads; the GitHub workflow's setting): BUILT_TOOLS are still built. OWN_TOOLS, the project's
# own small programs (probe, pause) and KWOK's stage files, are always made here (seconds, with Go
# and gcc).
#
# Every version and the list of tools come from versions.env (the one place they are pinned). The
# wrapper modules are generated here from those versions (go.mod); no upstream source is committed.
# Our own sources: langhost/ (see e2e/README.md), probe/ and pause/ (the real node's test images).
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
# shellcheck source=/dev/null
source "$here/versions.env"
read -ra released_tools <<<"$RELEASED_TOOLS"
read -ra built_tools <<<"$BUILT_TOOLS"
read -ra own_tools <<<"$OWN_TOOLS"

cache_root="${MLSTACK_E2E_CACHE:-$HOME/.cache/mlstack-e2e}"
# `build.sh --cache-root` prints only that folder: e2e/images.py keeps the images' caches there.
if [[ ${1:-} == --cache-root ]]; then
  echo "$cache_root"
  exit 0
fi
vhash="$(sha256sum "$here/versions.env" | cut -c1-12)"
top="$cache_root/$vhash"
bin="$top/bin"
mkdir -p "$bin" "$cache_root/tools"

export GOFLAGS="-mod=mod -trimpath"
export GOTOOLCHAIN="${GOTOOLCHAIN:-local}"
export CGO_ENABLED=0
ldstrip="-s -w"

log() { printf '[e2e-toolchain] %s\n' "$*" >&2; }

# One build at a time on a cache: two would build into the same tool folder (one removing it
# under the other's go build, or marking a half-built one complete). A build.sh takes the lock
# before its first build only (hold_lock, in `tool`), so that one that finds every tool built,
# or may not build (MLSTACK_E2E_NO_BUILD), never waits for another's build; it is held until
# this script and every process it started (a go build) have ended.
lock_fd=""
hold_lock() {
  [[ -n $lock_fd ]] && return 0
  exec {lock_fd}>"$cache_root/.lock"
  if ! flock --nonblock "$lock_fd"; then
    log "waiting for another build.sh on $cache_root to end"
    flock "$lock_fd"
  fi
}

# --- Installed binaries -------------------------------------------------------------------------
declare -A adopted=()

# The version a binary reports, as the pins spell it (v1.34.4, v3.6.16, v0.8.0, v3.274.0).
reported_version() {
  local out
  case "${1##*/}" in
    pulumi) out="$("$1" version 2>&1 || true)" ;;
    kubectl) out="$("$1" version --client 2>&1 || true)" ;;
    coredns) out="$("$1" -version 2>&1 || true)" ;;
    # weed prints "version 30GB 4.53 <commit> linux amd64": its pin is a pseudo-version, so the
    # commit it was built from (12 digits, as a pseudo-version names it) is what is compared.
    weed)
      "$1" version 2>&1 | grep -oE '\b[0-9a-f]{12,40}\b' | head -1 | cut -c1-12 | sed -E 's/^/v/'
      return ;;
    *) out="$("$1" --version 2>&1 || true)" ;;
  esac
  # Some print their own path first (kube-router): drop it before looking for a version.
  grep -oE '[0-9]+\.[0-9]+\.[0-9]+' <<<"${out//$1/}" | head -1 | sed -E 's/^/v/'
}

# adopt NAME PATH VERSION: link an installed binary into bin/ if it reports VERSION.
adopt() {
  local name=$1 version=$3 path found
  # Resolved, so that bin/ on PATH (a shell that uses the toolchain) links to what its link
  # points to, never to itself.
  path="$(readlink -f "$2")"
  [[ -x "$path" ]] || return 1
  found="$(reported_version "$path" || true)"
  if [[ "$found" != "v${version#v}" ]]; then
    log "ignoring $path: it reports ${found:-no version}, not v${version#v}"
    return 1
  fi
  ln -sfn "$path" "$bin/$name"
  adopted[$name]=1
}

# assets VERSION NAME...: adopt each NAME from $KUBEBUILDER_ASSETS; succeed when all were.
assets() {
  local version=$1 name all=0
  shift
  [[ -n "${KUBEBUILDER_ASSETS:-}" ]] || return 1
  for name in "$@"; do
    adopt "$name" "$KUBEBUILDER_ASSETS/$name" "$version" || all=1
  done
  return $all
}

# installed TOOL: link what is installed of TOOL's binaries; succeed when nothing is left to build.
installed() {
  local p dir plugin
  case $1 in
    pulumi)
      p="$(command -v pulumi)" && adopt pulumi "$p" "$PULUMI_VERSION" ;;
    langhost)
      # A released CLI ships its Python language host beside it.
      [[ -n "${adopted[pulumi]:-}" ]] || return 1
      dir="$(dirname "$(readlink -f "$bin/pulumi")")"
      [[ -x "$dir/pulumi-language-python" && -f "$dir/pulumi-language-python-exec" ]] || return 1
      ln -sfn "$dir/pulumi-language-python" "$bin/pulumi-language-python"
      ln -sfn "$dir/pulumi-language-python-exec" "$bin/pulumi-language-python-exec" ;;
    provider)
      plugin="${PULUMI_HOME:-$HOME/.pulumi}/plugins/resource-kubernetes-v$PULUMI_KUBERNETES_VERSION"
      [[ -x "$plugin/pulumi-resource-kubernetes" ]] || return 1
      ln -sfn "$plugin/pulumi-resource-kubernetes" "$bin/pulumi-resource-kubernetes" ;;
    etcd) assets "$ETCD_VERSION" etcd ;;
    kwok) assets "$KWOK_VERSION" kwok kwokctl ;;
    kube) assets "$KUBE_VERSION" kube-apiserver kube-controller-manager kube-scheduler ;;
    kubectl) assets "$KUBE_VERSION" kubectl ;;
    kubelet) assets "$KUBE_VERSION" kubelet kube-proxy ;;
    coredns) assets "$COREDNS_VERSION" coredns ;;
    kube-router) assets "$KUBE_ROUTER_VERSION" kube-router ;;
    metrics-server) assets "$METRICS_SERVER_VERSION" metrics-server ;;
    weed) assets "${WEED_VERSION##*-}" weed ;;
    *) return 1 ;;
  esac
}

# one_of NAME WORD...: whether NAME is one of the WORDs.
one_of() {
  local name=$1 word
  shift
  for word in "$@"; do [[ $word == "$name" ]] && return 0; done
  return 1
}

# Before a build: MLSTACK_E2E_NO_BUILD may refuse it, and all but pause need Go.
need_go() {
  local refused=""
  case ${MLSTACK_E2E_NO_BUILD:-} in
    "") ;;
    released) one_of "$1" "${released_tools[@]}" && refused=1 ;;
    *) one_of "$1" "${own_tools[@]}" || refused=1 ;;
  esac
  if [[ -n $refused ]]; then
    log "$1 is not installed at its pinned version and MLSTACK_E2E_NO_BUILD=$MLSTACK_E2E_NO_BUILD:" \
        "see e2e/README.md (Installed binaries first)"
    exit 1
  fi
  [[ $1 == pause ]] && return 0
  command -v go >/dev/null || {
    log "$1 must be built from Go modules and Go (>= 1.26) is not on PATH;" \
        "or install it at its pinned version: see e2e/README.md"
    exit 1
  }
}

# tool NAME VAR... [-- FILE...]: run build_NAME (its `-` as `_`) unless its folder is already
# complete, then link the folder's bin/* into bin/ and its stages/ to stages/. The folder is named
# after the values of the versions.env variables VAR..., the contents of FILE..., and the text of
# build_NAME and of the shared helpers. build_NAME writes into "$out" and works in "$work"
# (removed afterwards).
tool() {
  local name=$1 fn=${1//-/_}
  shift
  if installed "$name"; then
    log "$name: using the installed binaries"
    return 0
  fi
  local key
  key="$(declare -f "build_$fn" gowrap go_module_build kube_module)"
  while (($#)) && [[ $1 != -- ]]; do
    key+=$'\n'"$1=${!1}"
    shift
  done
  local f
  if (($#)); then
    shift
    for f in "$@"; do key+=$'\n'"$(sha256sum <"$f")"; done
  fi
  out="$cache_root/tools/$fn-$(printf '%s' "$key" | sha256sum | cut -c1-12)"
  work="$out/work"
  if [[ ! -e "$out/.complete" ]]; then
    need_go "$name"
    hold_lock
  fi
  # Looked at again under the lock: another build.sh may have built it meanwhile.
  if [[ ! -e "$out/.complete" ]]; then
    local start=$SECONDS
    rm -rf "$out" && mkdir -p "$out/bin" "$work"
    "build_$fn"
    rm -rf "$work"
    touch "$out/.complete"
    log "$name built in $((SECONDS - start)) s ($out)"
  fi
  for f in "$out"/bin/*; do
    # A binary that is installed stays linked to the installed one.
    [[ -e $f && -z "${adopted[${f##*/}]:-}" ]] && ln -sfn "$f" "$bin/${f##*/}"
  done
  if [[ -d "$out/stages" ]]; then
    [[ -L "$top/stages" ]] || rm -rf "$top/stages"
    ln -sfn "$out/stages" "$top/stages"
  fi
}

# gowrap DIR MODULE VERSION [LOCAL_VERSION]: the go.mod of a wrapper module in DIR (every wrapper
# module's) that requires MODULE@VERSION, with MODULE's `go` and `godebug` lines and its replaces,
# single-line or in a `replace (` block. A replace by another module is kept. One by a folder of
# MODULE's own repository (`=> ../sdk`, `=> ./staging/src/...`) becomes the release of the module
# it replaces at LOCAL_VERSION, or is dropped when none is given (MODULE's require of it then
# applies). Prints MODULE's source folder.
gowrap() {
  local d=$1 m=$2 v=$3 local_version=${4:-}
  mkdir -p "$d"
  local dir
  dir="$(cd "$d" && echo "module mlstack.local/e2e/wrapper" >go.mod \
    && go mod download -json "$m@$v" | python3 -c 'import json,sys; print(json.load(sys.stdin)["Dir"])')"
  python3 - "$dir/go.mod" "mlstack.local/e2e/${d##*/}" "$m" "$v" "$local_version" >"$d/go.mod" <<'PY'
import re, sys
gomod, name, module, version, local_version = sys.argv[1:6]
text = re.sub(r"//.*", "", open(gomod).read())
out = [f"module {name}", ""]
out += re.findall(r"^go \S+$", text, re.M)
out += re.findall(r"^godebug\s*\([^)]*\)|^godebug \S+$", text, re.M)
out += ["", f"require {module} {version}", ""]
replaces = re.findall(r"^replace\s+([^(\s].*\S)", text, re.M)
for block in re.findall(r"^replace\s*\((.*?)^\)", text, re.M | re.S):
    replaces += [line.strip() for line in block.splitlines() if line.strip()]
for replace in replaces:
    old, new = replace.split("=>")
    if not new.strip().startswith((".", "/")):
        out.append(f"replace {old.strip()} => {new.strip()}")
    elif local_version:
        replaced = old.split()[0]
        out.append(f"replace {replaced} => {replaced} {local_version}")
print("\n".join(out))
PY
  echo "$dir"
}

# go_module_build MODULE VERSION LDFLAGS OUTPUT PACKAGE...: build the PACKAGEs of MODULE@VERSION
# (paths inside the module, `.` for its root) in a wrapper module (gowrap), stripped, with
# LDFLAGS added (a version stamp), into OUTPUT (a file, or a folder ending in / for several).
go_module_build() {
  local m=$1 v=$2 ld=$3 o=$4
  shift 4
  local p packages=()
  for p in "$@"; do
    if [[ $p == . ]]; then packages+=("$m"); else packages+=("$m/$p"); fi
  done
  gowrap "$work/module" "$m" "$v" >/dev/null
  (cd "$work/module" && go build -ldflags "$ldstrip $ld" -o "$o" "${packages[@]}")
}

# --- Pulumi CLI ----------------------------------------------------------------------------------
build_pulumi() {
  log "building pulumi $PULUMI_VERSION"
  local d="$work/pulumi"
  # pkg/v3 replaces sdk/v3 by its own ../sdk: the sdk of the same release.
  gowrap "$d" github.com/pulumi/pulumi/pkg/v3 "$PULUMI_VERSION" "$PULUMI_VERSION" >/dev/null
  (cd "$d" && go build -ldflags "$ldstrip \
      -X github.com/pulumi/pulumi/sdk/v3/go/common/version.Version=$PULUMI_VERSION" \
      -o "$out/bin/pulumi" github.com/pulumi/pulumi/pkg/v3/cmd/pulumi)
}

# --- Python language host (our own small main: the upstream one is not on the module proxy) -----
build_langhost() {
  log "building pulumi-language-python (mlstack's minimal host) against sdk $PULUMI_VERSION"
  local d="$work/langhost" sdkdir
  sdkdir="$(gowrap "$d" github.com/pulumi/pulumi/sdk/v3 "$PULUMI_VERSION")"
  cp "$here/langhost/main.go" "$d/main.go"
  (cd "$d" && go build -ldflags "$ldstrip" -o "$out/bin/pulumi-language-python" .)
  # The exec shim is a Python script shipped in the sdk/v3 module; it must sit next to the host.
  install -m 0755 "$sdkdir/python/cmd/pulumi-language-python-exec" \
    "$out/bin/pulumi-language-python-exec"
}

# --- pulumi-kubernetes provider -----------------------------------------------------------------
build_provider() {
  log "building pulumi-resource-kubernetes $PULUMI_KUBERNETES_VERSION" \
      "($PULUMI_KUBERNETES_PROVIDER_MODULE_VERSION)"
  local d="$work/provider"
  local m="github.com/pulumi/pulumi-kubernetes/provider/v4"
  local dir
  dir="$(gowrap "$d" "$m" "$PULUMI_KUBERNETES_PROVIDER_MODULE_VERSION")"
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
      -o "$out/bin/pulumi-resource-kubernetes" ./cmd)
}

# --- etcd ---------------------------------------------------------------------------------------
build_etcd() {
  log "building etcd $ETCD_VERSION"
  go_module_build go.etcd.io/etcd/server/v3 "$ETCD_VERSION" "" "$out/bin/etcd" .
}

# --- KWOK ---------------------------------------------------------------------------------------
build_kwok() {
  log "building kwok + kwokctl $KWOK_VERSION"
  local m="sigs.k8s.io/kwok"
  go_module_build "$m" "$KWOK_VERSION" "-X $m/pkg/consts.Version=$KWOK_VERSION" "$out/bin/" \
    cmd/kwok cmd/kwokctl
}

# KWOK's default node and pod stages, copied from the kwok module (a config that names any Stage
# replaces the defaults, and the harness adds a LoadBalancer Service stage).
build_stages() {
  local dir
  dir="$(gowrap "$work/kwok-stages" sigs.k8s.io/kwok "$KWOK_VERSION")"
  mkdir -p "$out/stages"
  cp "$dir"/kustomize/stage/node/fast/node-initialize.yaml \
     "$dir"/kustomize/stage/node/heartbeat-with-lease/node-heartbeat-with-lease.yaml \
     "$dir"/kustomize/stage/pod/fast/pod-ready.yaml \
     "$dir"/kustomize/stage/pod/fast/pod-complete.yaml \
     "$dir"/kustomize/stage/pod/fast/pod-delete.yaml "$out/stages/"
  chmod u+w "$out/stages"/*.yaml
}

# --- Kubernetes ---------------------------------------------------------------------------------
# kube_module: the wrapper module of k8s.io/kubernetes in $work/kube (every staging module,
# ./staging/src/... upstream, replaced by its published release) and the version ldflags in
# $kube_ld.
kube_module() {
  gowrap "$work/kube" k8s.io/kubernetes "$KUBE_VERSION" "$KUBE_STAGING_VERSION" >/dev/null
  local major minor
  major="$(echo "$KUBE_VERSION" | sed -E 's/^v([0-9]+)\..*/\1/')"
  minor="$(echo "$KUBE_VERSION" | sed -E 's/^v[0-9]+\.([0-9]+)\..*/\1/')"
  kube_ld="$ldstrip"
  for p in k8s.io/component-base/version k8s.io/client-go/pkg/version; do
    kube_ld+=" -X $p.gitVersion=$KUBE_VERSION -X $p.gitMajor=$major -X $p.gitMinor=$minor"
    kube_ld+=" -X $p.gitTreeState=clean -X $p.buildDate=1970-01-01T00:00:00Z"
  done
}

build_kube() {
  log "building kube-apiserver, kube-controller-manager, kube-scheduler $KUBE_VERSION"
  kube_module
  (cd "$work/kube" && go build -ldflags "$kube_ld" -o "$out/bin/" \
      k8s.io/kubernetes/cmd/kube-apiserver \
      k8s.io/kubernetes/cmd/kube-controller-manager \
      k8s.io/kubernetes/cmd/kube-scheduler)
}

# kubectl of the same release, so the suite needs no kubectl from the machine.
build_kubectl() {
  log "building kubectl $KUBE_VERSION"
  kube_module
  (cd "$work/kube" && go build -ldflags "$kube_ld" -o "$out/bin/" k8s.io/kubernetes/cmd/kubectl)
}

# The real node's kubelet and kube-proxy, same release and flags as the control plane.
build_kubelet() {
  log "building kubelet, kube-proxy $KUBE_VERSION"
  kube_module
  (cd "$work/kube" && go build -ldflags "$kube_ld" -o "$out/bin/" \
      k8s.io/kubernetes/cmd/kubelet k8s.io/kubernetes/cmd/kube-proxy)
}

# --- The real node's cluster DNS and NetworkPolicy enforcer -------------------------------------
build_coredns() {
  log "building coredns $COREDNS_VERSION"
  go_module_build github.com/coredns/coredns "$COREDNS_VERSION" "" "$out/bin/coredns" .
}

# kube-router's NetworkPolicy controller (iptables + ipset), only as a pinned, offline test tool:
# the one release the proxy serves has reported security flaws; it never ships with the project.
build_kube_router() {
  log "building kube-router $KUBE_ROUTER_VERSION"
  local m="github.com/cloudnativelabs/kube-router/v2"
  go_module_build "$m" "$KUBE_ROUTER_VERSION" "-X $m/pkg/version.Version=$KUBE_ROUTER_VERSION" \
    "$out/bin/kube-router" cmd/kube-router
}

# metrics-server, run beside the kubelet as a host process: the Metrics API (metrics.k8s.io)
# behind the API server's aggregation layer, for the HorizontalPodAutoscalers of the e2e stack.
build_metrics_server() {
  log "building metrics-server $METRICS_SERVER_VERSION"
  go_module_build sigs.k8s.io/metrics-server "$METRICS_SERVER_VERSION" \
    "-X k8s.io/client-go/pkg/version.gitVersion=$METRICS_SERVER_VERSION" \
    "$out/bin/metrics-server" cmd/metrics-server
}

# SeaweedFS's weed, run beside the kubelet as a host process: the S3-compatible server the
# database's backups write to (e2e/s3.py). The pin is a pseudo-version: its commit is stamped.
build_weed() {
  log "building weed $WEED_VERSION"
  local m="github.com/seaweedfs/seaweedfs"
  go_module_build "$m" "$WEED_VERSION" "-X $m/weed/util/version.COMMIT=${WEED_VERSION##*-}" \
    "$out/bin/weed" weed
}

# --- The real node's test images: our own sources -----------------------------------------------
# e2e-probe: a static Go program (HTTP server/client, TCP dial, DNS lookup) run in test pods.
build_probe() {
  log "building e2e-probe"
  cp "$here/probe/main.go" "$work/main.go"
  printf 'module mlstack.local/e2e/probe\n\ngo 1.24\n' >"$work/go.mod"
  (cd "$work" && go build -ldflags "$ldstrip" -o "$out/bin/e2e-probe" .)
}

# e2e-pause: the pod sandbox's process (a static C program: pause() until a signal).
build_pause() {
  log "building e2e-pause"
  gcc -static -Os -s -Wall -Werror -o "$out/bin/e2e-pause" "$here/pause/pause.c"
}

build() {
  case $1 in
    pulumi) tool pulumi PULUMI_VERSION ;;
    langhost) tool langhost PULUMI_VERSION -- "$here/langhost/main.go" ;;
    provider) tool provider PULUMI_KUBERNETES_PROVIDER_MODULE_VERSION PULUMI_KUBERNETES_VERSION ;;
    etcd) tool etcd ETCD_VERSION ;;
    kwok | stages) tool "$1" KWOK_VERSION ;;
    kube | kubectl | kubelet) tool "$1" KUBE_VERSION KUBE_STAGING_VERSION ;;
    coredns) tool coredns COREDNS_VERSION ;;
    kube-router) tool kube-router KUBE_ROUTER_VERSION ;;
    metrics-server) tool metrics-server METRICS_SERVER_VERSION ;;
    weed) tool weed WEED_VERSION ;;
    probe) tool probe -- "$here/probe/main.go" ;;
    pause) tool pause -- "$here/pause/pause.c" ;;
    *) echo "build.sh: no tool named $1" >&2 && exit 2 ;;
  esac
}

want=("$@")
[[ ${#want[@]} -gt 0 ]] || want=("${released_tools[@]}" "${built_tools[@]}" "${own_tools[@]}")
for w in "${want[@]}"; do
  build "$w"
done
echo "$bin"
