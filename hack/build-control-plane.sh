#!/usr/bin/env bash
# Build the test control plane (etcd, kube-apiserver, kube-controller-manager,
# kubectl, helm, kwok) from Go modules into a per-version cache outside the
# repo. Does nothing for binaries already present. Prints the bin directory on
# its last line of stdout; progress goes to stderr.
#
#   BREAKWATER_CACHE_DIR   cache root (default ${XDG_CACHE_HOME:-~/.cache}/breakwater)
#   KUBEBUILDER_ASSETS     envtest-style directory with ready binaries: used
#                          for every binary it holds instead of building it
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
# shellcheck source=versions.env
source "${here}/versions.env"

cache_root="${BREAKWATER_CACHE_DIR:-${XDG_CACHE_HOME:-$HOME/.cache}/breakwater}"
# Helm is built as its release build is (the LDFLAGS of its Makefile): its version, and the Kubernetes
# version it assumes without a cluster (`helm template`'s default capabilities, which the chart's
# kubeVersion is checked against) taken from the client-go it is built with. HELM_RECIPE names that
# recipe in the cache key: change it when the recipe changes, so that helm alone is rebuilt.
HELM_RECIPE=release
# The cache key: one segment per component. A component whose segment is unchanged is copied from
# another key's directory rather than rebuilt.
segments=("k8s-${KUBERNETES_VERSION}" "etcd-${ETCD_VERSION}" "kwok-${KWOK_VERSION}" "helm-${HELM_VERSION}-${HELM_RECIPE}")
key="$(IFS=_; echo "${segments[*]}")"
bin_dir="${cache_root}/controlplane/${key}/bin"
src_dir="${cache_root}/controlplane/src"
export GOMODCACHE="${GOMODCACHE:-${cache_root}/go/mod}"
export GOCACHE="${GOCACHE:-${cache_root}/go/build}"
export GOFLAGS="-mod=mod -buildvcs=false"
export CGO_ENABLED=0

say() { printf '[control-plane] %s\n' "$*" >&2; }
die() { printf '[control-plane] ERROR: %s\n' "$*" >&2; exit 1; }

command -v go >/dev/null 2>&1 || die "Go not found on PATH. Install Go >= 1.26 (needed by Kubernetes ${KUBERNETES_VERSION}), or set KUBEBUILDER_ASSETS to a directory with the binaries, or BREAKWATER_TEST_KUBECONFIG to use an existing cluster."

mkdir -p "${bin_dir}" "${src_dir}"

binaries=(etcd kube-apiserver kube-controller-manager kubectl helm kwok)
missing=()
for b in "${binaries[@]}"; do
  if [[ -x "${bin_dir}/${b}" ]]; then continue; fi
  if [[ -n "${KUBEBUILDER_ASSETS:-}" && -x "${KUBEBUILDER_ASSETS}/${b}" ]]; then
    ln -sf "${KUBEBUILDER_ASSETS}/${b}" "${bin_dir}/${b}"
    say "${b}: using ${KUBEBUILDER_ASSETS}/${b}"
    continue
  fi
  missing+=("${b}")
done

# The key segment a binary (or file) of the cache belongs to.
segment_of() {
  case "$1" in
    kube-apiserver|kube-controller-manager|kubectl) echo "${segments[0]}" ;;
    etcd) echo "${segments[1]}" ;;
    kwok|kwok-stages.yaml) echo "${segments[2]}" ;;
    helm) echo "${segments[3]}" ;;
  esac
}
# Copy what another key's directory holds for an unchanged segment (a version bump of one component
# rebuilds that component only).
reuse_from_siblings() {
  local file="$1" segment dir
  segment="$(segment_of "${file}")"
  for dir in "${cache_root}"/controlplane/*/bin; do
    [[ "${dir}" == "${bin_dir}" || ! -s "${dir}/${file}" ]] && continue
    [[ "_$(basename "$(dirname "${dir}")")_" == *"_${segment}_"* ]] || continue
    cp -p "${dir}/${file}" "${bin_dir}/${file}.tmp" && mv "${bin_dir}/${file}.tmp" "${bin_dir}/${file}"
    say "${file}: reused from ${dir} (same ${segment})"
    return 0
  done
  return 1
}
if [[ ${#missing[@]} -gt 0 ]]; then  # copying is no build: a dry run does it too
  still=()
  for b in "${missing[@]}"; do reuse_from_siblings "${b}" || still+=("${b}"); done
  missing=("${still[@]+"${still[@]}"}")
  [[ -s "${bin_dir}/kwok-stages.yaml" ]] || reuse_from_siblings kwok-stages.yaml || true
fi

# kwok needs Stage objects to play the kubelet; they ship in its module (kustomize/stage/fast).
stages="${bin_dir}/kwok-stages.yaml"
if [[ ! -s "${stages}" ]] && ! printf '%s\n' "${missing[@]}" | grep -qx kwok; then
  missing+=(kwok-stages)
fi

if [[ ${#missing[@]} -eq 0 ]]; then
  say "all binaries present in ${bin_dir}"
  echo "${bin_dir}"
  exit 0
fi
if [[ "${BREAKWATER_BUILD_DRY_RUN:-}" == "1" ]]; then
  die "not built yet: ${missing[*]} (run: make control-plane)"
fi

say "building: ${missing[*]} (cold builds take several minutes each on 2 cores)"
say "module cache: ${GOMODCACHE}; build cache: ${GOCACHE}"

check_proxy() {
  if ! go list -m "k8s.io/kubernetes@${KUBERNETES_VERSION}" >/dev/null 2>"${src_dir}/proxy-check.log"; then
    die "module proxy unreachable or k8s.io/kubernetes@${KUBERNETES_VERSION} not served (GOPROXY=$(go env GOPROXY)): $(tail -n 3 "${src_dir}/proxy-check.log")"
  fi
}
check_proxy

# Build one main package from a wrapper module; $1 binary name, $2 module dir, $3 package, $4 ldflags
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

want() { local b; for b in "${missing[@]}"; do [[ "$b" == "$1" ]] && return 0; done; return 1; }

# --- Kubernetes: a wrapper module that replaces each staging module with its published version.
k8s_minor="${KUBERNETES_VERSION#v1.}"; k8s_minor="${k8s_minor%%.*}"
staging_version="v0.${KUBERNETES_VERSION#v1.}"
if want kube-apiserver || want kube-controller-manager || want kubectl; then
  kdir="${src_dir}/kubernetes-${KUBERNETES_VERSION}"
  if [[ ! -f "${kdir}/go.sum" ]]; then
    say "kubernetes: preparing wrapper module (downloads ~hundreds of MB of modules once)"
    rm -rf "${kdir}" && mkdir -p "${kdir}"
    gomod="$(go mod download -json "k8s.io/kubernetes@${KUBERNETES_VERSION}" | sed -n 's/.*"GoMod": "\(.*\)",/\1/p')"
    [[ -f "${gomod}" ]] || die "could not download k8s.io/kubernetes@${KUBERNETES_VERSION} go.mod"
    (
      cd "${kdir}"
      go mod init breakwater.dev/controlplane >/dev/null 2>&1
      go mod edit -require="k8s.io/kubernetes@${KUBERNETES_VERSION}"
      sed -n 's#^[[:space:]]*\(k8s.io/[a-z0-9-]*\) => ./staging/.*#\1#p' "${gomod}" | while read -r m; do
        go mod edit -replace="${m}=${m}@${staging_version}"
      done
      cat > tools.go <<'GO'
//go:build tools

package tools

import (
	_ "k8s.io/kubernetes/cmd/kube-apiserver"
	_ "k8s.io/kubernetes/cmd/kube-controller-manager"
	_ "k8s.io/kubernetes/cmd/kubectl"
)
GO
      go mod tidy -e >"${src_dir}/tidy-kubernetes.log" 2>&1 || { tail -n 30 "${src_dir}/tidy-kubernetes.log" >&2; exit 1; }
    ) || die "kubernetes wrapper module could not be prepared (log: ${src_dir}/tidy-kubernetes.log)"
  fi
  vpkg="k8s.io/component-base/version"
  kld="-X ${vpkg}.gitVersion=${KUBERNETES_VERSION} -X ${vpkg}.gitMajor=1 -X ${vpkg}.gitMinor=${k8s_minor} -X ${vpkg}.gitTreeState=clean -X ${vpkg}.buildDate=1970-01-01T00:00:00Z"
  kld="${kld} -X ${vpkg}/verflag.programName=kubernetes"
  for b in kube-apiserver kube-controller-manager kubectl; do
    want "$b" && build_in "$b" "${kdir}" "k8s.io/kubernetes/cmd/${b}" "${kld}"
  done
fi

# --- etcd: main package at the root of go.etcd.io/etcd/server/v3, built as a dependency.
if want etcd; then
  edir="${src_dir}/etcd-${ETCD_VERSION}"
  if [[ ! -f "${edir}/go.sum" ]]; then
    rm -rf "${edir}" && mkdir -p "${edir}"
    (
      cd "${edir}"
      go mod init breakwater.dev/etcd >/dev/null 2>&1
      printf '//go:build tools\n\npackage tools\n\nimport _ "go.etcd.io/etcd/server/v3"\n' > tools.go
      go get "go.etcd.io/etcd/server/v3@${ETCD_VERSION}" >"${src_dir}/tidy-etcd.log" 2>&1
      go mod tidy -e >>"${src_dir}/tidy-etcd.log" 2>&1
    ) || { tail -n 30 "${src_dir}/tidy-etcd.log" >&2; die "etcd module could not be prepared"; }
  fi
  build_in etcd "${edir}" "go.etcd.io/etcd/server/v3"
fi

# --- helm and kwok: plain modules without replace directives.
prepare_module() {
  local name="$1" module="$2" version="$3" pkg="$4"
  local dir="${src_dir}/${name}-${version}"
  if [[ ! -f "${dir}/go.sum" ]]; then
    rm -rf "${dir}" && mkdir -p "${dir}"
    (
      cd "${dir}"
      go mod init "breakwater.dev/${name}" >/dev/null 2>&1
      printf '//go:build tools\n\npackage tools\n\nimport _ "%s"\n' "${pkg}" > tools.go
      go get "${module}@${version}" >"${src_dir}/tidy-${name}.log" 2>&1
      go mod tidy -e >>"${src_dir}/tidy-${name}.log" 2>&1
    ) || { tail -n 30 "${src_dir}/tidy-${name}.log" >&2; die "${name} module could not be prepared"; }
  fi
}
simple_build() {
  local name="$1" module="$2" version="$3" pkg="$4" ldflags="${5:-}"
  prepare_module "${name}" "${module}" "${version}" "${pkg}"
  build_in "${name}" "${src_dir}/${name}-${version}" "${pkg}" "${ldflags}"
}
if want helm; then
  # As Helm's Makefile does: Kubernetes major = client-go's major + 1, minor = client-go's minor
  # (client-go v0.37.x: Kubernetes 1.37), for the default capabilities and the lint rules' deprecation
  # checks; a tagged build (no "unreleased" metadata), clean tree. (A module has no git commit to name.)
  prepare_module helm helm.sh/helm/v3 "${HELM_VERSION}" helm.sh/helm/v3/cmd/helm
  hdir="${src_dir}/helm-${HELM_VERSION}"
  client_go="$(cd "${hdir}" && go list -m -f '{{.Version}}' k8s.io/client-go)"
  [[ "${client_go}" =~ ^v([0-9]+)\.([0-9]+)\. ]] || die "helm: unexpected k8s.io/client-go version '${client_go}'"
  helm_k8s_major=$((BASH_REMATCH[1] + 1)) helm_k8s_minor="${BASH_REMATCH[2]}"
  hld="-X helm.sh/helm/v3/internal/version.version=${HELM_VERSION} -X helm.sh/helm/v3/internal/version.metadata="
  hld="${hld} -X helm.sh/helm/v3/internal/version.gitTreeState=clean"
  for hpkg in helm.sh/helm/v3/pkg/lint/rules helm.sh/helm/v3/pkg/chartutil; do
    hld="${hld} -X ${hpkg}.k8sVersionMajor=${helm_k8s_major} -X ${hpkg}.k8sVersionMinor=${helm_k8s_minor}"
  done
  say "helm: default capabilities Kubernetes v${helm_k8s_major}.${helm_k8s_minor} (client-go ${client_go})"
  build_in helm "${hdir}" helm.sh/helm/v3/cmd/helm "${hld}"
fi
want kwok && simple_build kwok sigs.k8s.io/kwok "${KWOK_VERSION}" sigs.k8s.io/kwok/cmd/kwok \
  "-X sigs.k8s.io/kwok/pkg/consts.Version=${KWOK_VERSION}"
if [[ ! -s "${stages}" ]]; then
  kwok_dir="$(go mod download -json "sigs.k8s.io/kwok@${KWOK_VERSION}" | sed -n 's/.*"Dir": "\(.*\)",/\1/p')"
  [[ -d "${kwok_dir}/kustomize/stage" ]] || die "kwok module has no kustomize/stage directory (${kwok_dir})"
  for f in node/fast/node-initialize.yaml node/heartbeat/node-heartbeat.yaml \
           pod/fast/pod-ready.yaml pod/fast/pod-complete.yaml pod/fast/pod-delete.yaml; do
    printf -- '---\n'; cat "${kwok_dir}/kustomize/stage/${f}"
  done > "${stages}.tmp"
  mv "${stages}.tmp" "${stages}"
  say "kwok-stages.yaml: node and pod lifecycle stages from kwok ${KWOK_VERSION}"
fi

for b in "${binaries[@]}"; do [[ -x "${bin_dir}/${b}" ]] || die "${b} missing after build"; done
[[ -s "${stages}" ]] || die "kwok-stages.yaml missing after build"
say "all binaries ready in ${bin_dir} ($(du -sh "${cache_root}" | cut -f1) cache in total)"
echo "${bin_dir}"
