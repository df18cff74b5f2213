"""A network namespace of the test node's own: where every non-loopback address of the node lives.

Created with `ip netns add`, given its loopback, a veth pair (both ends inside) holding the node IP, and
routes only to what is inside (the Service range on that veth). There is no default route, so nothing
sent inside can reach anything outside this machine. Processes join it with `nsenter --net=PATH`,
not `ip netns exec`: the latter also makes a mount namespace, and the kubelet's mounts must be seen by
containerd. Deleted on exit, with the namespaces containerd made for pods (`cni-*`) during the run.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import subprocess
import uuid
from dataclasses import dataclass, field
from pathlib import Path

from breakwater.errors import ControlPlaneError

NETNS_DIR = Path("/var/run/netns")
CLONE_NEWNET = 0x40000000


class NetnsError(ControlPlaneError):
    """The namespace could not be created or configured; the message says which command failed."""


def _ip(*args: str) -> None:
    proc = subprocess.run(["ip", *args], capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        raise NetnsError(f"ip {' '.join(args)}: {proc.stderr.strip()}")


def enter(path: Path) -> None:
    """Move the calling thread (the whole process when it has one thread) into the namespace at
    `path`. Sockets created before keep their namespace: that is how the port forwarder listens on
    the host's loopback and connects inside."""
    libc = ctypes.CDLL("libc.so.6", use_errno=True)
    fd = os.open(path, os.O_RDONLY)
    try:
        if libc.setns(fd, CLONE_NEWNET) != 0:
            raise NetnsError(f"setns({path}): {os.strerror(ctypes.get_errno())}")
    finally:
        os.close(fd)


@dataclass
class NetworkNamespace:
    node_ip: str
    service_cidr: str
    name: str = field(default_factory=lambda: f"breakwater-{uuid.uuid4().hex[:8]}")
    created: bool = False
    _pod_netns_before: set[str] = field(default_factory=set)

    @property
    def path(self) -> Path:
        return NETNS_DIR / self.name

    def nsenter(self) -> list[str]:
        """The command prefix that runs a program inside."""
        return ["nsenter", f"--net={self.path}"]

    def create(self) -> None:
        self._pod_netns_before = self._cni_netns()
        _ip("netns", "add", self.name)
        self.created = True
        ns = ["-n", self.name]
        _ip(*ns, "link", "set", "lo", "up")
        # The node IP on one end of a veth pair whose other end is inside too (no `dummy` link type
        # on this kernel): an interface to route the Service range to, reaching nothing outside.
        _ip(*ns, "link", "add", "bwnode0", "type", "veth", "peer", "name", "bwnode1")
        _ip(*ns, "addr", "add", f"{self.node_ip}/32", "dev", "bwnode0")
        _ip(*ns, "link", "set", "bwnode0", "up")
        _ip(*ns, "link", "set", "bwnode1", "up")
        # Locally sent packets to a ClusterIP need a route before kube-proxy's DNAT rewrites them.
        _ip(*ns, "route", "add", self.service_cidr, "dev", "bwnode0", "src", self.node_ip)
        self.sysctl("net.ipv4.ip_forward", "1")
        # IPv4 only: no link-local IPv6 addresses or router solicitations on the veth.
        self.sysctl("net.ipv6.conf.all.disable_ipv6", "1")
        self.sysctl("net.ipv6.conf.default.disable_ipv6", "1")
        # Bridged pod-to-pod replies of a Service connection must pass kube-proxy's conntrack.
        with contextlib.suppress(NetnsError):
            self.sysctl("net.bridge.bridge-nf-call-iptables", "1")

    def sysctl(self, key: str, value: str) -> None:
        proc = subprocess.run(
            [*self.nsenter(), "sysctl", "-q", "-w", f"{key}={value}"],
            capture_output=True,
            text=True,
            check=False,
        )
        if proc.returncode != 0:
            raise NetnsError(f"sysctl {key}={value} in {self.name}: {proc.stderr.strip()}")

    def routes(self) -> str:
        out = subprocess.run(
            ["ip", "-n", self.name, "route", "show", "table", "all"], capture_output=True, text=True
        )
        return out.stdout

    @staticmethod
    def _cni_netns() -> set[str]:
        return {p.name for p in NETNS_DIR.glob("cni-*")} if NETNS_DIR.is_dir() else set()

    def leftover_pod_netns(self) -> set[str]:
        """Pod namespaces containerd made during this run that are still there."""
        return self._cni_netns() - self._pod_netns_before

    def delete(self) -> None:
        for name in sorted(self.leftover_pod_netns()):
            subprocess.run(["ip", "netns", "del", name], capture_output=True, check=False)
        if self.created:
            subprocess.run(["ip", "netns", "del", self.name], capture_output=True, check=False)
            self.created = False
