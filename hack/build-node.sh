#!/usr/bin/env bash
# Build what a real node needs beyond Debian's containerd/runc/CNI: kubelet, kube-proxy and the
# scheduler of the pinned Kubernetes version (the control plane's wrapper module, copied so the two builds never
# write each other's go.sum), CoreDNS from its Go module with only the plugins the node uses, and
# the pause image compiled from the Kubernetes module's pause.c. Cached outside the repo, keyed by
# version; does nothing for what is present. Prints the bin directory on its last line of stdout.
#
#   BREAKWATER_CACHE_DIR   cache root (default ${XDG_CACHE_HOME:-~/.cache}/breakwater)
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
# shellcheck source=versions.env
source "${here}/versions.env"

cache_root="${BREAKWATER_CACHE_DIR:-${XDG_CACHE_HOME:-$HOME/.cache}/breakwater}"
bin_dir="${cache_root}/node/k8s-${KUBERNETES_VERSION}_coredns-${COREDNS_VERSION}_pause-${PAUSE_VERSION}/bin"
src_dir="${cache_root}/node/src"
export GOMODCACHE="${GOMODCACHE:-${cache_root}/go/mod}"
export GOCACHE="${GOCACHE:-${cache_root}/go/build}"
export GOFLAGS="-mod=mod -buildvcs=false"
export CGO_ENABLED=0

say() { printf '[node-build] %s\n' "$*" >&2; }
die() { printf '[node-build] ERROR: %s\n' "$*" >&2; exit 1; }

products=(kubelet kube-proxy kube-scheduler coredns pause.oci.tar)
missing=()
for p in "${products[@]}"; do [[ -s "${bin_dir}/${p}" ]] || missing+=("${p}"); done
if [[ ${#missing[@]} -eq 0 ]]; then
  say "all present in ${bin_dir}"
  echo "${bin_dir}"
  exit 0
fi
if [[ "${BREAKWATER_BUILD_DRY_RUN:-}" == "1" ]]; then
  die "not built yet: ${missing[*]} (run: make node)"
fi
command -v go >/dev/null 2>&1 || die "Go not found on PATH. Install Go >= 1.26 (needed by Kubernetes ${KUBERNETES_VERSION})."
bash "${here}/install-node-prereqs.sh" >&2 || die "prerequisites missing (see above)"
mkdir -p "${bin_dir}" "${src_dir}"
want() { local p; for p in "${missing[@]}"; do [[ "$p" == "$1" ]] && return 0; done; return 1; }
say "building: ${missing[*]} (a cold kubelet build takes several minutes on 2 cores)"

build_in() {
  local name="$1" dir="$2" pkg="$3" ldflags="${4:-}"
  local start=$SECONDS log="${src_dir}/build-${name}.log"
  say "${name}: building ${pkg}"
  if ! (cd "${dir}" && go build -trimpath -tags selinux,notest -ldflags "-s -w ${ldflags}" -o "${bin_dir}/${name}.tmp" "${pkg}") >"${log}" 2>&1; then
    tail -n 30 "${log}" >&2
    die "${name} failed to build (full log: ${log})"
  fi
  mv "${bin_dir}/${name}.tmp" "${bin_dir}/${name}"
  say "${name}: done in $((SECONDS - start)) s"
}

# --- kubelet, kube-proxy, kube-scheduler: the control plane's wrapper module (staging modules replaced by their
# published versions), prepared by build-control-plane.sh, copied here with the node's imports.
k8s_minor="${KUBERNETES_VERSION#v1.}"; k8s_minor="${k8s_minor%%.*}"
if want kubelet || want kube-proxy || want kube-scheduler || want pause.oci.tar; then
  cp_src="${cache_root}/controlplane/src/kubernetes-${KUBERNETES_VERSION}"
  kdir="${src_dir}/kubernetes-${KUBERNETES_VERSION}"
  if [[ ! -f "${kdir}/go.sum" ]]; then
    [[ -f "${cp_src}/go.sum" ]] || die "the control plane's wrapper module is missing (${cp_src}): run make control-plane first"
    rm -rf "${kdir}" && mkdir -p "${kdir}"
    cp "${cp_src}/go.mod" "${cp_src}/go.sum" "${kdir}/"
    sed -i 's#^module .*#module breakwater.dev/node#' "${kdir}/go.mod"
    cat > "${kdir}/tools.go" <<'GO'
//go:build tools

package tools

import (
	_ "k8s.io/kubernetes/cmd/kube-proxy"
	_ "k8s.io/kubernetes/cmd/kube-scheduler"
	_ "k8s.io/kubernetes/cmd/kubelet"
)
GO
    (cd "${kdir}" && go mod tidy -e) >"${src_dir}/tidy-kubernetes.log" 2>&1 \
      || { tail -n 30 "${src_dir}/tidy-kubernetes.log" >&2; die "node wrapper module could not be prepared"; }
  fi
  vpkg="k8s.io/component-base/version"
  kld="-X ${vpkg}.gitVersion=${KUBERNETES_VERSION} -X ${vpkg}.gitMajor=1 -X ${vpkg}.gitMinor=${k8s_minor} -X ${vpkg}.gitTreeState=clean -X ${vpkg}.buildDate=1970-01-01T00:00:00Z"
  kld="${kld} -X ${vpkg}/verflag.programName=kubernetes"
  for b in kubelet kube-proxy kube-scheduler; do
    want "$b" && build_in "$b" "${kdir}" "k8s.io/kubernetes/cmd/${b}" "${kld}"
  done
fi

# --- CoreDNS as a library: its server and only the plugins the node's Corefile names, so the
# cloud DNS back-ends (and their SDKs) are neither downloaded nor built.
if want coredns; then
  cdir="${src_dir}/coredns-${COREDNS_VERSION}"
  if [[ ! -f "${cdir}/go.sum" ]]; then
    rm -rf "${cdir}" && mkdir -p "${cdir}"
    cat > "${cdir}/main.go" <<'GO'
// CoreDNS with the plugins a test node needs: cluster.local from the API, nothing forwarded.
package main

import (
	"github.com/coredns/coredns/core/dnsserver"
	"github.com/coredns/coredns/coremain"

	_ "github.com/coredns/coredns/plugin/cache"
	_ "github.com/coredns/coredns/plugin/errors"
	_ "github.com/coredns/coredns/plugin/health"
	_ "github.com/coredns/coredns/plugin/kubernetes"
	_ "github.com/coredns/coredns/plugin/log"
	_ "github.com/coredns/coredns/plugin/ready"
)

func init() {
	dnsserver.Directives = []string{"errors", "log", "health", "ready", "cache", "kubernetes"}
}

func main() { coremain.Run() }
GO
    (
      cd "${cdir}"
      go mod init breakwater.dev/coredns >/dev/null 2>&1
      go get "github.com/coredns/coredns@${COREDNS_VERSION}"
      go mod tidy -e
    ) >"${src_dir}/tidy-coredns.log" 2>&1 || { tail -n 30 "${src_dir}/tidy-coredns.log" >&2; die "coredns module could not be prepared"; }
  fi
  build_in coredns "${cdir}" . "-X github.com/coredns/coredns/coremain.GitCommit=${COREDNS_VERSION}"
fi

# --- the pause image: no registry can be reached, so the sandbox image is made here.
if want pause.oci.tar; then
  command -v gcc >/dev/null 2>&1 || die "gcc not found (it compiles the pause container): apt-get install gcc libc6-dev"
  kmod="$(go mod download -json "k8s.io/kubernetes@${KUBERNETES_VERSION}" | sed -n 's/.*"Dir": "\(.*\)",/\1/p')"
  [[ -f "${kmod}/build/pause/linux/pause.c" ]] || die "pause.c not found in the kubernetes module (${kmod})"
  work="$(mktemp -d "${src_dir}/pause.XXXXXX")"
  trap 'rm -rf "${work}"' EXIT
  gcc -Os -Wall -Werror -static -DVERSION="${PAUSE_VERSION}" -o "${work}/pause" "${kmod}/build/pause/linux/pause.c" \
    || die "pause.c failed to compile (static glibc: apt-get install libc6-dev)"
  strip "${work}/pause"
  # umoci: the entrypoint must be set after repack, or repack drops it.
  umoci init --layout "${work}/oci"
  umoci new --image "${work}/oci:pause"
  umoci unpack --rootless --image "${work}/oci:pause" "${work}/bundle" >/dev/null
  install -m 0755 "${work}/pause" "${work}/bundle/rootfs/pause"
  umoci repack --image "${work}/oci:pause" "${work}/bundle"
  umoci config --image "${work}/oci:pause" --config.entrypoint /pause --config.user 65535:65535
  skopeo copy --quiet "oci:${work}/oci:pause" "oci-archive:${bin_dir}/pause.oci.tar.tmp:${PAUSE_IMAGE}"
  mv "${bin_dir}/pause.oci.tar.tmp" "${bin_dir}/pause.oci.tar"
  echo "${PAUSE_IMAGE}" > "${bin_dir}/pause.oci.tar.ref"
  say "pause: ${PAUSE_IMAGE} from pause.c ($(du -h "${bin_dir}/pause.oci.tar" | cut -f1))"
fi

for p in "${products[@]}"; do [[ -s "${bin_dir}/${p}" ]] || die "${p} missing after build"; done
say "node binaries ready in ${bin_dir}"
echo "${bin_dir}"
