#!/usr/bin/env bash
# The sidecar's hot path compiled by mypyc on this machine, as the image's build stage compiles it
# (setup.py, BREAKWATER_COMPILE=1): the same wheel, unpacked into a directory cached outside the clone
# and keyed by every input, rebuilt only when one changes. `make test-compiled` puts it first on
# PYTHONPATH. Prints the directory on its last line of stdout; progress goes to stderr.
#
#   BREAKWATER_CACHE_DIR  cache root (default ${XDG_CACHE_HOME:-~/.cache}/breakwater)
#   VENV                  the virtualenv whose Python, mypy and setuptools build it (default .venv)
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
repo="$(cd "${here}/.." && pwd)"
cache_root="${BREAKWATER_CACHE_DIR:-${XDG_CACHE_HOME:-$HOME/.cache}/breakwater}"
python="${VENV:-${repo}/.venv}/bin/python"

say() { printf '[compiled] %s\n' "$*" >&2; }
die() { printf '[compiled] ERROR: %s\n' "$*" >&2; exit 1; }

[[ -x "${python}" ]] || die "${python} not found: make install"
command -v cc >/dev/null 2>&1 || die "no C compiler: apt-get install gcc"
"${python}" -c 'import mypyc, setuptools' 2>/dev/null || die "mypy or setuptools missing in ${python}: make install"
include="$("${python}" -c 'import sysconfig; print(sysconfig.get_paths()["include"])')"
[[ -f "${include}/Python.h" ]] || die "no Python headers in ${include}: apt-get install python3-dev"

sources() {
  (cd "${repo}" && { printf '%s\n' pyproject.toml setup.py;
    find operator -type f ! -path '*/__pycache__/*' ! -name '*.pyc' ! -path '*.egg-info/*'; } | LC_ALL=C sort)
}
key="$( { "${python}" -c 'import sys; print(sys.version)'; "${python}" -m mypy --version;
  sha256sum "${BASH_SOURCE[0]}" | cut -d' ' -f1; sources | (cd "${repo}" && xargs sha256sum); } \
  | sha256sum | cut -c1-16)"
compiled_dir="${cache_root}/compiled"
out="${compiled_dir}/${key}"
if [[ -f "${out}/.complete" ]]; then
  say "up to date: ${out}"
  echo "${out}"
  exit 0
fi

mkdir -p "${compiled_dir}"
work="$(mktemp -d "${compiled_dir}/build.XXXXXX")"
trap 'rm -rf "${work}"' EXIT
# Built from a copy: pip builds in the source tree, and its build/ and egg-info stay out of the clone.
mkdir "${work}/src"
sources | (cd "${repo}" && xargs cp --parents -t "${work}/src")
say "mypyc: compiling the hot path ([tool.breakwater.compile] in pyproject.toml; about 30 s)"
start=$SECONDS
if ! (cd "${work}/src" && BREAKWATER_COMPILE=1 "${python}" -m pip wheel --no-deps --no-build-isolation \
    --wheel-dir "${work}/wheel" .) >"${work}/build.log" 2>&1; then
  tail -n 40 "${work}/build.log" >&2
  die "the compiled build failed (log above)"
fi
"${python}" -m zipfile -e "${work}"/wheel/breakwater-*.whl "${work}/out"
touch "${work}/out/.complete"
# Older builds are superseded: keep the cache from growing with every edit.
find "${compiled_dir}" -mindepth 1 -maxdepth 1 -type d ! -name 'build.*' -exec rm -rf {} +
mv "${work}/out" "${out}"
say "mypyc: built in $((SECONDS - start)) s: ${out}"
echo "${out}"
