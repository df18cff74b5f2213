"""What the real node touches on the host, and how to check it is gone: prerequisites, cgroups, mounts
and containerd's shims."""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import time
from pathlib import Path

CGROUP_ROOT = Path("/sys/fs/cgroup")
CNI_PLUGINS = Path("/usr/lib/cni")
PREREQUISITES = {
    "containerd": "apt-get install containerd runc",
    "ctr": "apt-get install containerd",
    "runc": "apt-get install runc",
    "nsenter": "apt-get install util-linux",
    "ip": "apt-get install iproute2",
    "iptables": "apt-get install iptables",
    "conntrack": "apt-get install conntrack",
}


def check_prerequisites() -> list[str]:
    """What is missing, each with how to get it; empty when the node can start."""
    problems = []
    if os.geteuid() != 0:
        problems.append("the real node needs root (network namespaces, mounts, cgroups)")
    for tool, fix in PREREQUISITES.items():
        if shutil.which(tool) is None:
            problems.append(f"{tool} not found: {fix} (or: bash hack/install-node-prereqs.sh)")
    for plugin in ("bridge", "host-local", "loopback"):
        if not (CNI_PLUGINS / plugin).is_file():
            problems.append(
                f"CNI plugin {CNI_PLUGINS / plugin} not found: apt-get install containernetworking-plugins"
            )
    return problems


def cgroup_v1() -> bool:
    return not (CGROUP_ROOT / "cgroup.controllers").exists()


def cgroup_hierarchies() -> list[Path]:
    """Where a cgroup of the node is made: every v1 hierarchy, or the one v2 tree."""
    if not cgroup_v1():
        return [CGROUP_ROOT]
    # "unified" too: on a hybrid host runc also makes each container's cgroup in the v2 tree.
    return [p for p in CGROUP_ROOT.iterdir() if p.is_dir() and not p.is_symlink()]


def kill_cgroups(name: str, *, timeout: float = 5.0) -> int:
    """SIGKILL every process in the node's cgroup and below (the pods' containers, their pause
    processes) until none is left; the number killed. cgroup v1 has no cgroup.kill, hence the loop."""
    killed = 0
    deadline = time.monotonic() + timeout
    while True:
        pids = {
            int(pid)
            for directory in _cgroups_below(name)
            for pid in _read(directory / "cgroup.procs").split()
        }
        if not pids or time.monotonic() > deadline:
            return killed
        for pid in pids:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
                killed += 1
        time.sleep(0.1)


def _cgroups_below(name: str) -> list[Path]:
    """The node's cgroup and every cgroup below it, in every hierarchy, deepest first. os.walk, not
    rglob: runc removes a container's cgroup while the walk runs, and os.walk skips what vanished."""
    found = [
        Path(root)
        for hierarchy in cgroup_hierarchies()
        for root, _, _ in os.walk(hierarchy / name)  # nothing when the cgroup is absent
    ]
    return sorted(found, key=lambda p: -len(p.parts))


def _read(path: Path) -> str:
    try:
        return path.read_text()
    except OSError:  # the cgroup went away meanwhile
        return ""


def remove_cgroups(name: str) -> None:
    """The node's cgroup and everything the kubelet and runc made below it, depth first."""
    for directory in _cgroups_below(name):
        with contextlib.suppress(OSError):
            directory.rmdir()


def shims_of(containerd_socket: Path) -> list[int]:
    """containerd-shim processes of the containerd at this socket (they outlive it by design)."""
    marker = str(containerd_socket).encode()
    pids = []
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        with contextlib.suppress(OSError):
            cmdline = (proc / "cmdline").read_bytes()
            if b"containerd-shim" in cmdline and marker in cmdline:
                pids.append(int(proc.name))
    return pids


def mounts_under(directory: Path) -> list[str]:
    """Mount points at or under `directory`, deepest first."""
    found = []
    with contextlib.suppress(OSError):
        for line in Path("/proc/self/mountinfo").read_text().splitlines():
            point = line.split()[4].replace("\\040", " ")
            if point == str(directory) or point.startswith(f"{directory}/"):
                found.append(point)
    return sorted(set(found), key=lambda p: p.count("/"), reverse=True)
