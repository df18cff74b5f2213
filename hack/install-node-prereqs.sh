#!/usr/bin/env bash
# Install the Debian packages the real node and the image build need, when any is missing:
# containerd + runc (the node's runtime), the CNI bridge/host-local/loopback plugins, iptables and
# conntrack (kube-proxy), buildah + mmdebstrap (the image, without a Docker engine), skopeo + umoci
# (OCI archives and the pause image). Debian 12 versions are what the node was tried with.
# Does nothing when every tool is present; needs root (apt-get) otherwise.
set -euo pipefail

say() { printf '[node-prereqs] %s\n' "$*" >&2; }
die() { printf '[node-prereqs] ERROR: %s\n' "$*" >&2; exit 1; }

# tool -> the package that ships it
declare -A package_of=(
  [containerd]=containerd
  [ctr]=containerd
  [runc]=runc
  [/usr/lib/cni/bridge]=containernetworking-plugins
  [/usr/lib/cni/host-local]=containernetworking-plugins
  [/usr/lib/cni/loopback]=containernetworking-plugins
  [iptables]=iptables
  [conntrack]=conntrack
  [buildah]=buildah
  [mmdebstrap]=mmdebstrap
  [skopeo]=skopeo
  [umoci]=umoci
  [nsenter]=util-linux
  [ip]=iproute2
)

have() { if [[ "$1" == /* ]]; then [[ -x "$1" ]]; else command -v "$1" >/dev/null 2>&1; fi; }

missing=()
for tool in "${!package_of[@]}"; do
  have "${tool}" || missing+=("${package_of[${tool}]}")
done
if [[ ${#missing[@]} -eq 0 ]]; then
  say "all present"
  exit 0
fi
mapfile -t packages < <(printf '%s\n' "${missing[@]}" | sort -u)
command -v apt-get >/dev/null 2>&1 || die "missing: ${packages[*]}; install them with your package manager (no apt-get here)"
[[ $(id -u) -eq 0 ]] || die "missing: ${packages[*]}; run as root: apt-get install ${packages[*]}"

say "installing ${packages[*]} (Debian packages)"
# No init system here, and none is wanted: the node starts containerd itself, so keep apt from
# trying to start (and later leave running) a system containerd.
policy=/usr/sbin/policy-rc.d
added_policy=0
if [[ ! -e "${policy}" ]]; then
  printf '#!/bin/sh\nexit 101\n' > "${policy}" && chmod +x "${policy}" && added_policy=1
fi
trap '[[ ${added_policy} -eq 1 ]] && rm -f "${policy}"' EXIT
export DEBIAN_FRONTEND=noninteractive
apt-get update -qq >&2
apt-get install -y -qq --no-install-recommends "${packages[@]}" >&2
for tool in "${!package_of[@]}"; do
  have "${tool}" || die "${tool} still missing after installing ${package_of[${tool}]}"
done
say "installed: ${packages[*]}"
