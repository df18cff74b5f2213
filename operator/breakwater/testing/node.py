"""A real Kubernetes node next to the test control plane: pods run as containers, Services route.

Everything with a non-loopback address lives in a network namespace the node creates and deletes
(`breakwater.testing.netns`): the control plane (etcd, kube-apiserver, kube-controller-manager, run
inside it by `ControlPlane(netns=...)`), containerd + runc from Debian with the CNI bridge and
host-local plugins, the kubelet, kube-proxy and kube-scheduler of the pinned version, and CoreDNS
serving `cluster.local` from the API and nothing else (no forward: a name outside the cluster does
not resolve). The namespace has no default route; pods get routes to the Service range and the node
IP only. Images come from OCI archives imported into containerd (no registry), so pods use
`imagePullPolicy: IfNotPresent` or `Never`. The host reaches the API server at 127.0.0.1:PORT through a
port forwarder; the kubeconfig is the same inside and outside.

`stop()` leaves nothing behind: every process stopped (the pods' killed), every mount under the work
directory unmounted, the node's cgroups removed, the kernel settings the kubelet changes restored, the
namespaces (the node's and any pod's) deleted and the files removed (in the background).
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

from breakwater.errors import ControlPlaneError
from breakwater.testing.controlplane import SERVICE_CIDR, ControlPlane, _Component, repo_root
from breakwater.testing.netns import NetnsError, NetworkNamespace
from breakwater.testing.nodeconfig import NODE_IP, NODE_NAME, POD_CIDR, image_name, write_node_configs
from breakwater.testing.nodehost import (
    cgroup_hierarchies,
    check_prerequisites,
    kill_cgroups,
    mounts_under,
    remove_cgroups,
    shims_of,
)

logger = logging.getLogger("breakwater.testing.node")

# The kubelet sets these machine-wide (protectKernelDefaults: false); stop() puts them back.
KUBELET_SYSCTLS = ("vm/overcommit_memory", "kernel/panic", "kernel/panic_on_oops")


class NodeError(ControlPlaneError):
    """The node could not be built or started; the message says what is missing or what failed."""


def _say(text: str) -> None:
    print(f"[node] {text}", file=sys.stderr, flush=True)


def _run_script(name: str, *, build: bool) -> Path:
    root = repo_root()
    if root is None:
        raise NodeError(f"hack/{name} not found: the real node runs from a source checkout")
    env = {**os.environ, **({} if build else {"BREAKWATER_BUILD_DRY_RUN": "1"})}
    out = subprocess.run(
        ["bash", str(root / "hack" / name)],
        stdout=subprocess.PIPE,
        stderr=None if build else subprocess.PIPE,
        text=True,
        env=env,
        check=False,
    )
    if out.returncode != 0 or not out.stdout.strip():
        detail = " ".join((out.stderr or "").strip().splitlines()[-2:])
        raise NodeError(f"hack/{name} exited {out.returncode} {detail}".strip())
    return Path(out.stdout.strip().splitlines()[-1])


def find_node_binaries(*, build: bool = True) -> Path:
    """kubelet, kube-proxy, coredns and the pause image archive (hack/build-node.sh)."""
    explicit = os.environ.get("BREAKWATER_NODE_BIN")
    return Path(explicit) if explicit else _run_script("build-node.sh", build=build)


def find_image(*, build: bool = True) -> Path:
    """The Breakwater image as an OCI archive (hack/build-image.sh, cached by its inputs)."""
    explicit = os.environ.get("BREAKWATER_IMAGE_ARCHIVE")
    if explicit:
        return Path(explicit)
    if not build:
        # The script checks the cache without building; it has no dry-run mode of its own.
        raise NodeError("find_image(build=False) needs BREAKWATER_IMAGE_ARCHIVE")
    return _run_script("build-image.sh", build=True)


@dataclass
class RealNode:
    """A control plane and one real node in a namespace of their own; start() / stop()."""

    control_plane_bin: Path
    node_bin: Path
    images: tuple[Path, ...] = ()
    progress: Callable[[str], None] = _say
    workdir: Path = field(default_factory=lambda: Path(tempfile.mkdtemp(prefix="bwn-")))
    netns: NetworkNamespace = field(default_factory=lambda: NetworkNamespace(NODE_IP, SERVICE_CIDR))
    control_plane: ControlPlane | None = None
    components: list[_Component] = field(default_factory=list)
    node_name: str = NODE_NAME
    audit: bool = False  # the API server's audit log (`breakwater.testing.audit`)
    _sysctls: dict[str, str] = field(default_factory=dict)

    @property
    def kubeconfig(self) -> Path:
        assert self.control_plane is not None
        return self.control_plane.kubeconfig

    @property
    def pod_cidr(self) -> str:
        return POD_CIDR

    @property
    def cgroup_name(self) -> str:
        return self.netns.name

    @property
    def containerd_socket(self) -> Path:
        return self.workdir / "containerd.sock"

    def __enter__(self) -> RealNode:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # -- start -------------------------------------------------------------------------------------

    def start(self, *, timeout: float = 120.0) -> None:
        problems = check_prerequisites()
        if problems:
            raise NodeError("the real node cannot start:\n  " + "\n  ".join(problems))
        started = time.monotonic()
        try:
            self._sysctls = {k: (Path("/proc/sys") / k).read_text().strip() for k in KUBELET_SYSCTLS}
            self.progress(
                f"network namespace {self.netns.name}: node IP {NODE_IP}, pods {POD_CIDR}, no default route"
            )
            self.netns.create()
            self.progress(
                "control plane (etcd, kube-apiserver, kube-controller-manager) inside the namespace"
            )
            self.control_plane = ControlPlane(
                bin_dir=self.control_plane_bin,
                netns=self.netns,
                kwok=False,
                node_name=self.node_name,
                audit=self.audit,
            )
            self.control_plane.start()
            self.progress(f"API server ready; from the host: {self.control_plane.server}")
            self._write_configs()
            self.progress("containerd (Debian) with runc and the CNI bridge")
            self._start_containerd()
            self._import_images()
            self.progress("kubelet, kube-proxy (iptables), kube-scheduler and CoreDNS (cluster.local only)")
            self._start_kubelet()
            self._start_kube_proxy()
            self._start_scheduler()
            self._start_coredns()
            self._wait_node_ready(timeout=timeout)
        except BaseException as exc:
            self.print_logs()
            self.stop()
            if isinstance(exc, ControlPlaneError):
                raise
            if isinstance(exc, NetnsError | OSError | subprocess.SubprocessError):
                raise NodeError(f"the real node failed to start: {exc}") from exc
            raise
        self.progress(f"node {self.node_name} Ready in {time.monotonic() - started:.1f} s")

    def _spawn(self, name: str, command: list[str]) -> _Component:
        assert self.control_plane is not None
        component = self.control_plane.spawn(name, [], command=command)
        # Stopped by stop() in its own order (before the control plane), not by the control plane.
        self.control_plane.components.remove(component)
        self.components.append(component)
        return component

    def _write_configs(self) -> None:
        assert self.control_plane is not None
        write_node_configs(
            workdir=self.workdir,
            control_plane=self.control_plane,
            node_name=self.node_name,
            node_bin=self.node_bin,
            cgroup_name=self.cgroup_name,
            containerd_socket=self.containerd_socket,
            progress=self.progress,
        )

    def _ctr(self, *args: str, check: bool = True, timeout: float = 300) -> str:
        proc = subprocess.run(
            ["ctr", f"--address={self.containerd_socket}", "--namespace=k8s.io", *args],
            capture_output=True,
            text=True,
            check=False,
            timeout=timeout,
        )
        if check and proc.returncode != 0:
            raise NodeError(f"ctr {' '.join(args)}: {proc.stderr.strip()}")
        return proc.stdout

    def _start_containerd(self) -> None:
        component = self._spawn("containerd", ["containerd", f"--config={self.workdir / 'containerd.toml'}"])
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            if component.process.poll() is not None:
                raise NodeError(f"containerd exited with {component.process.returncode} during start-up")
            if self.containerd_socket.exists() and self._ctr("version", check=False, timeout=5) != "":
                return
            time.sleep(0.2)
        raise NodeError("containerd did not answer within 30 s")

    def _import_images(self) -> None:
        for archive in (self.node_bin / "pause.oci.tar", *self.images):
            self.import_image(archive)

    def import_image(self, archive: Path) -> str:
        """Import an OCI archive into the node's containerd (nothing is ever pulled); its image name."""
        started = time.monotonic()
        self._ctr("images", "import", "--no-unpack=false", str(archive))
        name = image_name(archive)
        self.progress(f"imported {name or archive.name} in {time.monotonic() - started:.1f} s")
        return name

    def _start_kubelet(self) -> None:
        w = self.workdir
        self._spawn(
            "kubelet",
            [
                str(self.node_bin / "kubelet"),
                f"--config={w / 'kubelet.yaml'}",
                f"--kubeconfig={w / 'kubelet.kubeconfig'}",
                f"--root-dir={w / 'kubelet'}",
                f"--cert-dir={w / 'kubelet' / 'pki'}",
                f"--hostname-override={self.node_name}",
                f"--node-ip={NODE_IP}",
                "--v=1",
            ],
        )

    def _start_kube_proxy(self) -> None:
        self._spawn(
            "kube-proxy", [str(self.node_bin / "kube-proxy"), f"--config={self.workdir / 'kube-proxy.yaml'}"]
        )

    def _start_scheduler(self) -> None:
        assert self.control_plane is not None
        kubeconfig = self.control_plane.kubeconfig
        self._spawn(
            "kube-scheduler",
            [
                str(self.node_bin / "kube-scheduler"),
                f"--kubeconfig={kubeconfig}",
                f"--authentication-kubeconfig={kubeconfig}",
                f"--authorization-kubeconfig={kubeconfig}",
                "--leader-elect=false",
                "--bind-address=127.0.0.1",
                "--secure-port=10259",
            ],
        )

    def _start_coredns(self) -> None:
        self._spawn("coredns", [str(self.node_bin / "coredns"), "-conf", str(self.workdir / "Corefile")])

    def kubectl(self, *args: str, input: str | None = None, check: bool = True) -> str:
        assert self.control_plane is not None
        return self.control_plane.kubectl(*args, input=input, check=check)

    def _wait_node_ready(self, *, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        jsonpath = "jsonpath={.status.conditions[?(@.type=='Ready')].status}"
        last = ""
        while time.monotonic() < deadline:
            for component in self.components:
                if component.process.poll() is not None:
                    raise NodeError(
                        f"{component.name} exited with {component.process.returncode} during start-up"
                    )
            last = self.kubectl("get", "node", self.node_name, "-o", jsonpath, check=False).strip()
            if last == "True":
                return
            time.sleep(0.5)
        raise NodeError(f"node {self.node_name} not Ready within {timeout:.0f} s (Ready={last or 'absent'})")

    # -- stop --------------------------------------------------------------------------------------

    def print_logs(self, *, lines: int = 25) -> None:
        if self.control_plane is not None:
            self.control_plane.print_logs(lines=lines)
        for component in self.components:
            with contextlib.suppress(OSError):
                tail = component.log_path.read_text(errors="replace").splitlines()[-lines:]
                print(f"--- {component.name} (last {len(tail)} lines of its log) ---", file=sys.stderr)
                print("\n".join(tail), file=sys.stderr)

    def _stop_components(self, names: tuple[str, ...]) -> None:
        chosen = [c for c in self.components if c.name in names]
        for component in chosen:
            if component.process.poll() is None:
                component.process.send_signal(signal.SIGTERM)
        for component in chosen:
            try:
                component.process.wait(timeout=15)
            except subprocess.TimeoutExpired:
                component.process.kill()
                component.process.wait()
            self.components.remove(component)

    def mounts(self) -> list[str]:
        """Mount points under the work directory, deepest first."""
        return mounts_under(self.workdir)

    def leftovers(self) -> list[str]:
        """What stop() could not remove: empty after a clean run."""
        found = [f"mount {m}" for m in self.mounts()]
        found += [f"process {pid} (containerd-shim)" for pid in shims_of(self.containerd_socket)]
        found += [f"netns {n}" for n in self.netns.leftover_pod_netns()]
        if self.netns.path.exists():
            found.append(f"netns {self.netns.name}")
        found += [
            f"cgroup {h / self.cgroup_name}" for h in cgroup_hierarchies() if (h / self.cgroup_name).exists()
        ]
        return found

    @contextlib.contextmanager
    def _timed(self, what: str) -> Iterator[None]:
        started = time.monotonic()
        yield
        logger.info("node stop: %s in %.1f s", what, time.monotonic() - started)

    def stop(self) -> None:
        # Nothing of a pod is kept, so none is stopped gracefully: the kubelet goes first (it restarts
        # nothing then), every process of the pods is killed, and what the kubelet would have cleaned
        # up goes with the work directory, the node's cgroups and network namespaces. Waiting for the
        # kubelet to delete each pod took 6-7 s at the end of every session.
        with self._timed("kubelet, kube-proxy, kube-scheduler and CoreDNS stopped"):
            self._stop_components(("coredns", "kube-scheduler", "kube-proxy", "kubelet"))
        with self._timed("the pods' processes killed"):
            try:
                kill_cgroups(self.cgroup_name)
            except OSError as exc:  # the rest of the teardown still runs; leftovers() tells
                logger.warning("could not kill every process of the pods: %s", exc)
        with self._timed("containerd stopped"):
            self._stop_components(("containerd",))
            for pid in shims_of(self.containerd_socket):
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
        for point in self.mounts():
            subprocess.run(["umount", "--lazy", point], capture_output=True, check=False)
        if self.control_plane is not None:
            with self._timed("control plane stopped"):
                self.control_plane.stop()
        with self._timed("cgroups and network namespace removed"):
            remove_cgroups(self.cgroup_name)
            self.netns.delete()
        for key, value in self._sysctls.items():
            with contextlib.suppress(OSError):
                (Path("/proc/sys") / key).write_text(value)
        logs = Path("/var/log/containers")
        if logs.is_dir():
            for link in logs.iterdir():
                with contextlib.suppress(OSError):
                    if link.is_symlink() and str(os.readlink(link)).startswith(str(self.workdir)):
                        link.unlink()
        left = self.leftovers()
        # The unpacked images are tens of thousands of files (4.5 s for one image): removed in the
        # background by an rm that outlives the caller (sh returns at once; no mount is crossed).
        remove = 'rm -rf --one-file-system "$1" </dev/null >/dev/null 2>&1 &'
        subprocess.run(["sh", "-c", remove, "sh", str(self.workdir)], check=False)
        if left:
            logger.warning("the node left behind: %s", ", ".join(left))


def start_real_node(*, build: bool = True, progress: Callable[[str], None] = _say) -> RealNode:
    """Build (once) what the node needs, then start it; the caller stops it."""
    from breakwater.testing.controlplane import find_binaries

    problems = check_prerequisites()
    if problems:
        raise NodeError("the real node cannot start:\n  " + "\n  ".join(problems))
    progress("control plane, node binaries and image (built once, cached outside the clone)")
    node = RealNode(
        control_plane_bin=find_binaries(build=build),
        node_bin=find_node_binaries(build=build),
        images=(find_image(build=build),),
        progress=progress,
    )
    node.start()
    return node
