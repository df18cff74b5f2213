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

`stop()` leaves nothing behind: pods deleted and their containers gone, every process stopped, every
mount under the work directory unmounted, the node's cgroups removed, the kernel settings the kubelet
changes restored, the namespaces (the node's and any pod's) deleted and the files removed.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from breakwater.testing.controlplane import (
    SERVICE_CIDR,
    ControlPlane,
    ControlPlaneError,
    _Component,
    repo_root,
)
from breakwater.testing.netns import NetnsError, NetworkNamespace

logger = logging.getLogger("breakwater.testing.node")

NODE_NAME = "breakwater-node"
NODE_IP = "10.250.0.1"  # on the namespace's veth; pods reach it through their gateway
POD_CIDR = "10.244.0.0/24"
POD_GATEWAY = "10.244.0.1"
CLUSTER_DOMAIN = "cluster.local"
CGROUP_ROOT = Path("/sys/fs/cgroup")
# The kubelet sets these machine-wide (protectKernelDefaults: false); stop() puts them back.
KUBELET_SYSCTLS = ("vm/overcommit_memory", "kernel/panic", "kernel/panic_on_oops")
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


def image_name(archive: Path) -> str:
    """The name an archive's image is imported under (`NAME.ref` next to it)."""
    ref = archive.with_name(archive.name + ".ref")
    return ref.read_text().strip() if ref.is_file() else ""


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
                bin_dir=self.control_plane_bin, netns=self.netns, kwok=False, node_name=self.node_name
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
        cp = self.control_plane
        ca = cp.ca
        assert ca is not None
        w = self.workdir
        for sub in (
            "cni/net.d",
            "cni/ipam",
            "kubelet",
            "pod-logs",
            "containerd/root",
            "containerd/state",
            "runc",
        ):
            (w / sub).mkdir(parents=True, exist_ok=True)
        cni = {
            "cniVersion": "1.0.0",
            "name": "breakwater",
            "plugins": [
                {
                    "type": "bridge",
                    "bridge": "cni0",
                    "isGateway": True,
                    "ipMasq": False,
                    "hairpinMode": True,
                    "ipam": {
                        "type": "host-local",
                        "dataDir": str(w / "cni" / "ipam"),
                        "ranges": [[{"subnet": POD_CIDR, "gateway": POD_GATEWAY}]],
                        # No default route in pods either: the Service range and the node, nothing else.
                        "routes": [{"dst": SERVICE_CIDR}, {"dst": f"{NODE_IP}/32"}],
                    },
                }
            ],
        }
        (w / "cni" / "net.d" / "10-breakwater.conflist").write_text(json.dumps(cni, indent=2))
        pause = image_name(self.node_bin / "pause.oci.tar") or "registry.k8s.io/pause:3.10.1"
        (w / "containerd.toml").write_text(
            f"""version = 2
root = "{w / "containerd" / "root"}"
state = "{w / "containerd" / "state"}"
[grpc]
  address = "{self.containerd_socket}"
[ttrpc]
  address = "{self.containerd_socket}.ttrpc"
[metrics]
  address = ""
[plugins."io.containerd.grpc.v1.cri"]
  sandbox_image = "{pause}"
  # root here lacks CAP_SYS_RESOURCE: a negative oom_score_adj would kill every sandbox at start.
  restrict_oom_score_adj = true
  enable_selinux = false
  [plugins."io.containerd.grpc.v1.cri".containerd]
    snapshotter = "overlayfs"
    default_runtime_name = "runc"
    [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc]
      runtime_type = "io.containerd.runc.v2"
      [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc.options]
        SystemdCgroup = false
        Root = "{w / "runc"}"
  [plugins."io.containerd.grpc.v1.cri".cni]
    bin_dir = "{CNI_PLUGINS}"
    conf_dir = "{w / "cni" / "net.d"}"
[plugins."io.containerd.internal.v1.opt"]
  path = "{w / "containerd" / "opt"}"
"""
        )
        # Client certificates: the kubelet as a node (the Node authorizer), kube-proxy and CoreDNS as admin.
        ca.issue(f"system:node:{self.node_name}", organizations=("system:nodes",), client=True).write(
            w, "kubelet-client"
        )
        kubelet_kubeconfig = cp.kubeconfig.read_text()
        kubelet_kubeconfig = kubelet_kubeconfig.replace(
            str(cp.workdir / "admin.crt"), str(w / "kubelet-client.crt")
        ).replace(str(cp.workdir / "admin.key"), str(w / "kubelet-client.key"))
        (w / "kubelet.kubeconfig").write_text(kubelet_kubeconfig)
        (w / "resolv.conf").write_text("")  # pods with dnsPolicy Default get no resolver at all
        failcgroupv1 = cgroup_v1()
        if failcgroupv1:
            self.progress("cgroup v1 host: kubelet needs failCgroupV1=false (set)")
        for hierarchy in self._cgroup_hierarchies():
            (hierarchy / self.cgroup_name).mkdir(exist_ok=True)
        (w / "kubelet.yaml").write_text(
            json.dumps(
                {
                    "apiVersion": "kubelet.config.k8s.io/v1beta1",
                    "kind": "KubeletConfiguration",
                    "failCgroupV1": not failcgroupv1,
                    "cgroupDriver": "cgroupfs",
                    "cgroupRoot": f"/{self.cgroup_name}",
                    "containerRuntimeEndpoint": f"unix://{self.containerd_socket}",
                    "address": NODE_IP,
                    "healthzBindAddress": "127.0.0.1",
                    "authentication": {
                        "anonymous": {"enabled": False},
                        "webhook": {"enabled": False},
                        "x509": {"clientCAFile": str(cp.ca_file)},
                    },
                    # A throw-away node: any client with a certificate of the test CA may use it.
                    "authorization": {"mode": "AlwaysAllow"},
                    "clusterDNS": [NODE_IP],
                    "clusterDomain": CLUSTER_DOMAIN,
                    "resolvConf": str(w / "resolv.conf"),
                    "podLogsDir": str(w / "pod-logs"),
                    "failSwapOn": False,
                    "protectKernelDefaults": False,
                    "serializeImagePulls": False,
                    "evictionHard": {
                        "memory.available": "100Mi",
                        "nodefs.available": "1%",
                        "imagefs.available": "1%",
                    },
                    "imageGCHighThresholdPercent": 100,
                    "syncFrequency": "10s",
                    "fileCheckFrequency": "20s",
                    "nodeStatusReportFrequency": "10s",
                    "registerNode": True,
                    "maxPods": 60,
                    "staticPodPath": "",
                    "rotateCertificates": False,
                    "serverTLSBootstrap": False,
                }
            )
        )
        (w / "kube-proxy.yaml").write_text(
            json.dumps(
                {
                    "apiVersion": "kubeproxy.config.k8s.io/v1alpha1",
                    "kind": "KubeProxyConfiguration",
                    "clientConnection": {"kubeconfig": str(cp.kubeconfig)},
                    "hostnameOverride": self.node_name,
                    "mode": "iptables",
                    "clusterCIDR": POD_CIDR,
                    "bindAddress": NODE_IP,
                    "healthzBindAddress": "127.0.0.1:10256",
                    "metricsBindAddress": "127.0.0.1:10249",
                    # Masquerade Service traffic to the bridge address, so a reply between two pods of
                    # the bridge comes back through conntrack even where bridged frames skip iptables.
                    "iptables": {"masqueradeAll": True, "syncPeriod": "10s", "minSyncPeriod": "0s"},
                    # Leave machine-wide conntrack limits alone (0: do not set).
                    "conntrack": {
                        "maxPerCore": 0,
                        "min": 0,
                        "tcpEstablishedTimeout": "0s",
                        "tcpCloseWaitTimeout": "0s",
                    },
                }
            )
        )
        (w / "Corefile").write_text(
            f"""{CLUSTER_DOMAIN}:53 in-addr.arpa:53 ip6.arpa:53 {{
    errors
    health 127.0.0.1:8181
    ready 127.0.0.1:8182
    kubernetes {CLUSTER_DOMAIN} in-addr.arpa ip6.arpa {{
        kubeconfig {cp.kubeconfig}
        pods insecure
        ttl 5
    }}
    cache 5
}}
"""
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
            started = time.monotonic()
            self._ctr("images", "import", "--no-unpack=false", str(archive))
            self.progress(
                f"imported {image_name(archive) or archive.name} in {time.monotonic() - started:.1f} s"
            )

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

    def _delete_pods(self, timeout: float = 60) -> None:
        """Let the kubelet stop every pod (their network namespaces and mounts go with them)."""
        if self.control_plane is None or not self.control_plane.components:
            return
        if not any(c.name == "kubelet" and c.process.poll() is None for c in self.components):
            return
        # No controller may replace what is deleted: stop kube-controller-manager first.
        for component in self.control_plane.components:
            if component.name == "kube-controller-manager" and component.process.poll() is None:
                component.process.terminate()
                component.process.wait(timeout=15)
        self.kubectl(
            "delete", "pods", "--all", "--all-namespaces", "--grace-period=1", "--wait=false", check=False
        )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            pods = self.kubectl("get", "pods", "-A", "-o", "name", check=False).split()
            if not pods and not self._ctr("tasks", "ls", "-q", check=False, timeout=10).split():
                return
            time.sleep(0.5)
        logger.warning("pods still running after %.0f s; killing their containers", timeout)

    def _kill_tasks(self) -> None:
        if not self.containerd_socket.exists():
            return
        for task in self._ctr("tasks", "ls", "-q", check=False, timeout=10).split():
            self._ctr("tasks", "kill", "--signal", "SIGKILL", task, check=False, timeout=10)
        time.sleep(0.5)
        for task in self._ctr("tasks", "ls", "-q", check=False, timeout=10).split():
            self._ctr("tasks", "delete", "--force", task, check=False, timeout=10)

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

    def _leftover_shims(self) -> list[int]:
        """containerd-shim processes of this node's containerd (they outlive it by design)."""
        marker = str(self.containerd_socket).encode()
        pids = []
        for proc in Path("/proc").iterdir():
            if not proc.name.isdigit():
                continue
            with contextlib.suppress(OSError):
                cmdline = (proc / "cmdline").read_bytes()
                if b"containerd-shim" in cmdline and marker in cmdline:
                    pids.append(int(proc.name))
        return pids

    def mounts(self) -> list[str]:
        """Mount points under the work directory, deepest first."""
        found = []
        with contextlib.suppress(OSError):
            for line in Path("/proc/self/mountinfo").read_text().splitlines():
                point = line.split()[4].replace("\\040", " ")
                if point == str(self.workdir) or point.startswith(f"{self.workdir}/"):
                    found.append(point)
        return sorted(set(found), key=lambda p: p.count("/"), reverse=True)

    def _cgroup_hierarchies(self) -> list[Path]:
        if not cgroup_v1():
            return [CGROUP_ROOT]
        return [p for p in CGROUP_ROOT.iterdir() if p.is_dir() and not p.is_symlink() and p.name != "unified"]

    def _remove_cgroups(self) -> None:
        for hierarchy in self._cgroup_hierarchies():
            top = hierarchy / self.cgroup_name
            if not top.is_dir():
                continue
            for directory in sorted((p for p in top.rglob("*") if p.is_dir()), key=lambda p: -len(p.parts)):
                with contextlib.suppress(OSError):
                    directory.rmdir()
            with contextlib.suppress(OSError):
                top.rmdir()

    def leftovers(self) -> list[str]:
        """What stop() could not remove: empty after a clean run."""
        found = [f"mount {m}" for m in self.mounts()]
        found += [f"process {pid} (containerd-shim)" for pid in self._leftover_shims()]
        found += [f"netns {n}" for n in self.netns.leftover_pod_netns()]
        if self.netns.path.exists():
            found.append(f"netns {self.netns.name}")
        found += [
            f"cgroup {h / self.cgroup_name}"
            for h in self._cgroup_hierarchies()
            if (h / self.cgroup_name).exists()
        ]
        return found

    def stop(self) -> None:
        with contextlib.suppress(Exception):
            self._delete_pods()
        self._stop_components(("coredns", "kube-scheduler", "kube-proxy", "kubelet"))
        with contextlib.suppress(Exception):
            self._kill_tasks()
        self._stop_components(("containerd",))
        for pid in self._leftover_shims():
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        for point in self.mounts():
            subprocess.run(["umount", "--lazy", point], capture_output=True, check=False)
        if self.control_plane is not None:
            self.control_plane.stop()
        self._remove_cgroups()
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
        shutil.rmtree(self.workdir, ignore_errors=True)
        left = self.leftovers()
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
