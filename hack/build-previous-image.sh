#!/usr/bin/env bash
# The previous version of Breakwater, for the upgrade test (tests/node/test_upgrade_on_node.py): the
# tree of PREVIOUS_COMMIT (git archive, cached outside the clone by commit) and its image, built from
# that tree's own Dockerfile by today's hack/build-image.sh (cached by its inputs like the current image).
# Prints the tree's directory, then the image archive, on the last two lines of stdout.
#
# Nothing is published yet, so "previous" is a commit of main; once a release is, this becomes its tag.
set -euo pipefail

PREVIOUS_COMMIT=ecf0a49a108f404fefc93121da32251001bc52c4 # main at the end of 2026-12-01's first session
IMAGE_NAME=localhost/breakwater:previous

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
repo="$(cd "${here}/.." && pwd)"
cache_root="${BREAKWATER_CACHE_DIR:-${XDG_CACHE_HOME:-$HOME/.cache}/breakwater}"
tree="${cache_root}/previous/${PREVIOUS_COMMIT}"

say() { printf '[previous] %s\n' "$*" >&2; }
die() { printf '[previous] ERROR: %s\n' "$*" >&2; exit 1; }

if [[ ! -s "${tree}/Dockerfile" ]]; then
  git -C "${repo}" cat-file -e "${PREVIOUS_COMMIT}^{commit}" 2>/dev/null \
    || die "commit ${PREVIOUS_COMMIT:0:12} is not in this clone (a shallow clone needs: git fetch --unshallow)"
  say "the tree of ${PREVIOUS_COMMIT:0:12} -> ${tree}"
  rm -rf "${tree}.tmp" && mkdir -p "${tree}.tmp"
  git -C "${repo}" archive "${PREVIOUS_COMMIT}" | tar -x -C "${tree}.tmp"
  rm -rf "${tree}" && mv "${tree}.tmp" "${tree}"
  # Trees of other commits are superseded.
  find "${cache_root}/previous" -mindepth 1 -maxdepth 1 ! -name "${PREVIOUS_COMMIT}" -exec rm -rf {} +
fi

archive="$(BREAKWATER_IMAGE_SOURCE="${tree}" BREAKWATER_IMAGE_NAME="${IMAGE_NAME}" \
  bash "${here}/build-image.sh" | tail -n 1)"
[[ -s "${archive}" ]] || die "hack/build-image.sh printed no archive"
echo "${tree}"
echo "${archive}"
