#!/usr/bin/env bash
# Build the Breakwater image from the repository's Dockerfile without a Docker engine: a Python base
# image made locally from Debian packages (mmdebstrap), and a build base with a C compiler besides, then
# the Dockerfile built by buildah with them as its PYTHON_IMAGE and BUILD_IMAGE build arguments (the
# Dockerfile's defaults stay the public python images).
# The result is an OCI archive cached outside the clone, keyed by every input, and rebuilt only when
# one changes. Prints the archive's path on its last line of stdout; progress goes to stderr.
#
#   BREAKWATER_CACHE_DIR   cache root (default ${XDG_CACHE_HOME:-~/.cache}/breakwater)
#   BREAKWATER_IMAGE_NAME  the name inside the archive (default localhost/breakwater:<appVersion>)
#   BREAKWATER_IMAGE_SOURCE  the source tree to build (default this checkout; hack/build-previous-image.sh
#                          builds an older commit's tree with this script)
#
# Next to the archive: NAME.ref (the image name) and NAME.sizes (compressed and unpacked bytes).
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
repo="$(cd "${BREAKWATER_IMAGE_SOURCE:-${here}/..}" && pwd)"
cache_root="${BREAKWATER_CACHE_DIR:-${XDG_CACHE_HOME:-$HOME/.cache}/breakwater}"
image_dir="${cache_root}/image"

say() { printf '[image] %s\n' "$*" >&2; }
die() { printf '[image] ERROR: %s\n' "$*" >&2; exit 1; }

bash "${here}/install-node-prereqs.sh" >&2 || die "prerequisites missing (see above)"
for tool in buildah mmdebstrap skopeo; do
  command -v "${tool}" >/dev/null 2>&1 || die "${tool} not found: apt-get install ${tool}"
done
[[ $(id -u) -eq 0 ]] || die "buildah and mmdebstrap run as root here (rootless needs subuids this machine lacks)"

app_version="$(sed -n 's/^appVersion: *"\{0,1\}\([^"]*\)"\{0,1\}$/\1/p' "${repo}/charts/breakwater/Chart.yaml")"
image_name="${BREAKWATER_IMAGE_NAME:-localhost/breakwater:${app_version}}"

# --- the base: Debian bookworm's python3 on an "essential" root (no apt, no docs, no locales) -------
# perl comes in only for usrmerge, which has done its work once the root is built (usr-is-merged
# stands in for it); nothing in the image runs perl. ~50 MB less.
# python-is-python3: the Dockerfile runs `python`, as the public python image provides it.
suite=bookworm
base_packages="usr-is-merged,python3,python3-venv,python-is-python3"
base_key="$(printf '%s\n' "${suite}" "${base_packages}" "$(mmdebstrap --version)" \
  "$(sed -n '/^# --- the base/,/^# --- the build base/p' "${BASH_SOURCE[0]}")" | sha256sum | cut -c1-16)"
base_tar="${image_dir}/base-${suite}-${base_key}.tar"
base_ref="localhost/breakwater-base:${base_key}"

# --- the build base: the same python3 with a C compiler and its headers (the Dockerfile's BUILD_IMAGE),
# for the stage that compiles the hot path; nothing of it reaches the image.
build_packages="${base_packages},python3-dev,gcc,libc6-dev"
build_key="$(printf '%s\n' "${suite}" "${build_packages}" "$(mmdebstrap --version)" | sha256sum | cut -c1-16)"
build_tar="${image_dir}/build-base-${suite}-${build_key}.tar"
build_ref="localhost/breakwater-build-base:${build_key}"

# --- the image: every file the Dockerfile reads (the .dockerignore allow-list), and this script -----
context_files() {
  (cd "${repo}" && { printf '%s\n' Dockerfile .dockerignore pyproject.toml; [[ ! -f setup.py ]] || echo setup.py;
    find operator -type f ! -path '*/__pycache__/*' ! -name '*.pyc' ! -path '*.egg-info/*'; } | LC_ALL=C sort)
}
key="$( { echo "${base_key}" "${build_key}" "${image_name}" "$(buildah --version)"; sha256sum "${BASH_SOURCE[0]}" | cut -d' ' -f1;
  context_files | (cd "${repo}" && xargs sha256sum); } | sha256sum | cut -c1-16)"
# One archive per image name (its tag in the file name): a rebuild supersedes only its own name's.
name_part="$(printf '%s' "${image_name##*/}" | tr -c 'A-Za-z0-9._-' '-')"
archive="${image_dir}/${name_part}-${key}.oci.tar"

if [[ -s "${archive}" && -s "${archive}.ref" && -s "${archive}.sizes" ]]; then
  say "up to date: ${archive} ($(cat "${archive}.sizes"))"
  echo "${archive}"
  exit 0
fi
mkdir -p "${image_dir}"

# buildah gets a storage of its own under the cache, removed afterwards: nothing in
# /var/lib/containers, no overlay mounts left behind (vfs copies instead of mounting).
work="$(mktemp -d "${image_dir}/build.XXXXXX")"
# buildah also drops a blob-info cache and a CNI lock file in system paths; remove what it created.
system_paths=(/var/lib/containers /etc/cni/net.d)
created=()
for p in "${system_paths[@]}"; do [[ -e "${p}" ]] || created+=("${p}"); done
cleanup() {
  buildah --root "${work}/storage" --runroot "${work}/run" --storage-driver vfs rm --all >/dev/null 2>&1 || true
  rm -rf "${work}"
  local p
  for p in "${created[@]}"; do rm -rf "${p}"; done
  rmdir /etc/cni 2>/dev/null || true
}
trap cleanup EXIT
bah() { buildah --root "${work}/storage" --runroot "${work}/run" --storage-driver vfs "$@"; }

if [[ ! -s "${base_tar}" ]]; then
  say "base: mmdebstrap ${suite} + ${base_packages} (once; about a minute)"
  start=$SECONDS
  # Documentation, man pages and locales are never read in a container: keep them out.
  mmdebstrap --variant=essential --format=tar --include="${base_packages}" \
    --dpkgopt='path-exclude=/usr/share/doc/*' --dpkgopt='path-include=/usr/share/doc/*/copyright' \
    --dpkgopt='path-exclude=/usr/share/man/*' --dpkgopt='path-exclude=/usr/share/locale/*' \
    --dpkgopt='path-exclude=/usr/share/info/*' \
    --customize-hook='chroot "$1" dpkg --purge usrmerge libfile-find-rule-perl libnumber-compare-perl libtext-glob-perl perl perl-modules-5.36 libperl5.36 libgdbm-compat4' \
    --customize-hook='rm -rf "$1"/var/cache/apt "$1"/var/lib/apt/lists/* "$1"/var/log/*' \
    "${suite}" "${base_tar}.tmp" >"${work}/mmdebstrap.log" 2>&1 \
    || { tail -n 30 "${work}/mmdebstrap.log" >&2; die "mmdebstrap failed"; }
  mv "${base_tar}.tmp" "${base_tar}"
  say "base: done in $((SECONDS - start)) s ($(du -h "${base_tar}" | cut -f1))"
fi

if [[ ! -s "${build_tar}" ]]; then
  say "build base: mmdebstrap ${suite} + ${build_packages} (once; about two minutes)"
  start=$SECONDS
  mmdebstrap --variant=essential --format=tar --include="${build_packages}" \
    --dpkgopt='path-exclude=/usr/share/doc/*' --dpkgopt='path-exclude=/usr/share/man/*' \
    --dpkgopt='path-exclude=/usr/share/locale/*' --dpkgopt='path-exclude=/usr/share/info/*' \
    "${suite}" "${build_tar}.tmp" >"${work}/mmdebstrap-build.log" 2>&1 \
    || { tail -n 30 "${work}/mmdebstrap-build.log" >&2; die "mmdebstrap (build base) failed"; }
  mv "${build_tar}.tmp" "${build_tar}"
  say "build base: done in $((SECONDS - start)) s ($(du -h "${build_tar}" | cut -f1))"
fi
# Older bases of either kind are superseded by these keys.
find "${image_dir}" -maxdepth 1 \( -name "base-*.tar" -o -name "build-base-*.tar" \) \
  ! -name "${base_tar##*/}" ! -name "${build_tar##*/}" -delete

import_base() {  # TAR REF
  say "base: importing ${1##*/} as ${2}"
  local ctr
  ctr="$(bah from --quiet scratch)"
  bah add --quiet "${ctr}" "${1}" / >/dev/null
  bah config --env PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin --cmd python3 "${ctr}"
  bah commit --quiet "${ctr}" "${2}" >/dev/null
  bah rm "${ctr}" >/dev/null
}
import_base "${base_tar}" "${base_ref}"
import_base "${build_tar}" "${build_ref}"

# pip inside the build uses this machine's trust store and index (a mirror or a TLS-inspecting proxy
# needs them), mounted for the RUN steps only: nothing of it lands in the image.
pip_mounts=()
ca_bundle="${PIP_CERT:-/etc/ssl/certs/ca-certificates.crt}"
if [[ -s "${ca_bundle}" ]]; then
  {
    printf '[global]\ncert = /run/breakwater-build/ca.crt\n'
    [[ -n "${PIP_INDEX_URL:-}" ]] && printf 'index-url = %s\n' "${PIP_INDEX_URL}"
  } > "${work}/pip.conf"
  pip_mounts=(--volume "${ca_bundle}:/run/breakwater-build/ca.crt:ro" --volume "${work}/pip.conf:/etc/pip.conf:ro")
fi

say "image: buildah build of ${repo}/Dockerfile with PYTHON_IMAGE=${base_ref}, BUILD_IMAGE=${build_ref} (pip fetches the wheels, mypyc compiles the hot path)"
start=$SECONDS
if ! bah build --quiet --isolation chroot --network host --pull=never --layers=false \
    --build-arg "PYTHON_IMAGE=${base_ref}" --build-arg "BUILD_IMAGE=${build_ref}" "${pip_mounts[@]}" \
    --tag "${image_name}" --file "${repo}/Dockerfile" "${repo}" >"${work}/build.log" 2>&1; then
  tail -n 40 "${work}/build.log" >&2
  die "buildah build failed (log above)"
fi
say "image: built in $((SECONDS - start)) s"

bah push --quiet "${image_name}" "oci-archive:${archive}.tmp:${image_name}" >/dev/null
mv "${archive}.tmp" "${archive}"
# Compressed: the layers as a registry stores and a node pulls them (the archive's gzip blobs);
# unpacked: the same layers decompressed, i.e. what the node's disk holds once they are extracted.
skopeo copy --quiet --dest-decompress "oci-archive:${archive}" "dir:${work}/layers" >/dev/null
unpacked="$(python3 -c 'import json,os,sys; d=sys.argv[1]; m=json.load(open(os.path.join(d,"manifest.json"))); print(sum(os.path.getsize(os.path.join(d,l["digest"].split(":")[1])) for l in m["layers"]))' "${work}/layers")"
compressed="$(skopeo inspect --raw "oci-archive:${archive}" | python3 -c 'import json,sys; m=json.load(sys.stdin); print(sum(l["size"] for l in m["layers"]) + m["config"]["size"])')"
echo "${image_name}" > "${archive}.ref"
echo "compressed=${compressed} unpacked=${unpacked}" > "${archive}.sizes"
# Older archives of this image name are superseded: keep the cache from growing with every edit.
find "${image_dir}" -maxdepth 1 -name "${name_part}-*.oci.tar*" ! -name "${archive##*/}*" -delete
say "image: ${image_name} -> ${archive} ($(awk -v c="${compressed}" -v u="${unpacked}" 'BEGIN{printf "%.1f MB compressed, %.1f MB unpacked", c/1e6, u/1e6}'))"
echo "${archive}"
