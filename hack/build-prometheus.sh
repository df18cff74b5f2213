#!/usr/bin/env bash
# Build promtool (and, when asked, the prometheus server) from the Go module
# github.com/prometheus/prometheus at the version pinned in versions.env, into a
# per-version cache outside the repo. Does nothing for binaries already present.
# Prints the bin directory on its last line of stdout; progress goes to stderr.
#
#   hack/build-prometheus.sh                      promtool only (what `make test` needs)
#   hack/build-prometheus.sh promtool prometheus  both (the dashboard queries on real metrics, tests/cluster/test_metrics.py)
#
#   BREAKWATER_CACHE_DIR   cache root (default ${XDG_CACHE_HOME:-~/.cache}/breakwater)
#
# Built with `go install <pkg>@<version>`: the module's own go.mod decides every dependency (it has no
# replace directives), and the `remove_all_sd` build tag leaves out every service discovery but file
# and http (the cloud SDKs are most of a cold build; the tests' Prometheus reads its targets from files).
# The server is built without the `builtinassets` tag: its web UI is absent, its HTTP API is whole.
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
# shellcheck source=versions.env
source "${here}/versions.env"

cache_root="${BREAKWATER_CACHE_DIR:-${XDG_CACHE_HOME:-$HOME/.cache}/breakwater}"
bin_dir="${cache_root}/prometheus/${PROMETHEUS_MODULE_VERSION}/bin"
log_dir="${cache_root}/prometheus/${PROMETHEUS_MODULE_VERSION}/logs"
export GOMODCACHE="${GOMODCACHE:-${cache_root}/go/mod}"
export GOCACHE="${GOCACHE:-${cache_root}/go/build}"
export GOFLAGS="-mod=mod -buildvcs=false"
export CGO_ENABLED=0

say() { printf '[prometheus] %s\n' "$*" >&2; }
die() { printf '[prometheus] ERROR: %s\n' "$*" >&2; exit 1; }

wanted=("$@")
[[ ${#wanted[@]} -gt 0 ]] || wanted=(promtool)
for b in "${wanted[@]}"; do
  [[ "$b" == promtool || "$b" == prometheus ]] || die "unknown binary ${b} (promtool or prometheus)"
done

missing=()
for b in "${wanted[@]}"; do [[ -x "${bin_dir}/${b}" ]] || missing+=("${b}"); done
if [[ ${#missing[@]} -eq 0 ]]; then
  say "present in ${bin_dir}: ${wanted[*]}"
  echo "${bin_dir}"
  exit 0
fi
if [[ "${BREAKWATER_BUILD_DRY_RUN:-}" == "1" ]]; then
  die "not built yet: ${missing[*]} (run: make promtool, or make prometheus)"
fi
command -v go >/dev/null 2>&1 || die "Go not found on PATH. Install Go >= 1.26 (the prometheus module needs it)."
mkdir -p "${bin_dir}" "${log_dir}"

module=github.com/prometheus/prometheus
# Prometheus v3.X.Y is tagged v0.3XX.Y as a Go module; its VERSION file holds the release number.
if ! release="$(go mod download -json "${module}@${PROMETHEUS_MODULE_VERSION}" 2>"${log_dir}/download.log" \
    | sed -n 's/.*"Dir": "\(.*\)",/\1/p')" || [[ ! -f "${release}/VERSION" ]]; then
  die "could not download ${module}@${PROMETHEUS_MODULE_VERSION} (GOPROXY=$(go env GOPROXY)): $(tail -n 3 "${log_dir}/download.log")"
fi
version="$(cat "${release}/VERSION")"
vpkg=github.com/prometheus/common/version
ldflags="-s -w -X ${vpkg}.Version=${version} -X ${vpkg}.Revision=${PROMETHEUS_MODULE_VERSION} -X ${vpkg}.Branch=module"
ldflags="${ldflags} -X ${vpkg}.BuildUser=breakwater -X ${vpkg}.BuildDate=19700101-00:00:00"

say "building ${missing[*]} of Prometheus ${version} (${module}@${PROMETHEUS_MODULE_VERSION})"
say "module cache: ${GOMODCACHE}; build cache: ${GOCACHE}"
for b in "${missing[@]}"; do
  start=$SECONDS
  tmp="$(mktemp -d "${bin_dir}/.${b}.XXXXXX")"
  if ! GOBIN="${tmp}" go install -trimpath -tags remove_all_sd -ldflags "${ldflags}" \
      "${module}/cmd/${b}@${PROMETHEUS_MODULE_VERSION}" >"${log_dir}/build-${b}.log" 2>&1; then
    tail -n 30 "${log_dir}/build-${b}.log" >&2
    rm -rf "${tmp}"
    die "${b} failed to build (full log: ${log_dir}/build-${b}.log)"
  fi
  mv "${tmp}/${b}" "${bin_dir}/${b}"
  rm -rf "${tmp}"
  say "${b}: done in $((SECONDS - start)) s"
done
"${bin_dir}/promtool" --version >/dev/null 2>&1 || [[ ! -x "${bin_dir}/promtool" ]] || die "promtool does not run"
echo "${bin_dir}"
