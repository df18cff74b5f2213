"""Start a real, throw-away Kubernetes control plane on loopback.

etcd, kube-apiserver (RBAC, admission webhooks, Pod Security), kube-controller-manager and kwok (which
plays the kubelet for one fake Node whose pod CIDR is inside 127.0.0.0/8), all from the binaries that
``hack/build-control-plane.sh`` caches. Free ports are picked, so two control planes can coexist; every
process is stopped and every file removed on exit, and the processes die with their parent even when it
is killed (PR_SET_PDEATHSIG). ``audit=True`` adds the API server's audit log (``breakwater.testing.audit``).

For a real node (``breakwater.testing.node``) the same control plane runs inside the node's network
namespace, without kwok: the API server then reaches Service IPs and the kubelet, and a port forwarder
makes it reachable at the same 127.0.0.1 port from the host.
"""

from __future__ import annotations

import contextlib
import ipaddress
import logging
import os
import random
import shutil
import signal
import socket
import ssl
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TextIO

from breakwater import pki
from breakwater.errors import ControlPlaneError
from breakwater.testing import audit, processes
from breakwater.testing.netns import NetworkNamespace

logger = logging.getLogger(__name__)

BINARIES = ("etcd", "kube-apiserver", "kube-controller-manager", "kubectl", "helm", "kwok")
NODE_NAME = "kwok-node-0"
POD_CIDR_POOL = "127.64.0.0/10"  # each control plane takes one random /24 of it, all on loopback


def random_pod_cidr() -> tuple[str, str]:
    """A /24 for the kwok node's pods, and its node IP: distinct per control plane, so the sidecars
    of two control planes running at once (two test runs, a benchmark) never bind the same address."""
    pool = ipaddress.ip_network(POD_CIDR_POOL)
    index = random.randrange(1, 2 ** (24 - pool.prefixlen))
    network = ipaddress.ip_network((int(pool.network_address) + (index << 8), 24))
    return str(network), str(network.network_address + 1)


SERVICE_CIDR = "10.96.0.0/16"  # only allocated from, never sent traffic to


def repo_root() -> Path | None:
    """The source checkout this package runs from (editable installs), if any."""
    candidate = Path(__file__).resolve().parents[3]
    return candidate if (candidate / "hack" / "build-control-plane.sh").is_file() else None


def find_binaries(*, build: bool = True) -> Path:
    """The directory holding every control-plane binary, building them once when needed."""
    explicit = os.environ.get("BREAKWATER_CONTROL_PLANE_BIN")
    if explicit:
        missing = [b for b in BINARIES if not (Path(explicit) / b).is_file()]
        if missing:
            raise ControlPlaneError(f"BREAKWATER_CONTROL_PLANE_BIN={explicit} lacks: {', '.join(missing)}")
        return Path(explicit)
    root = repo_root()
    if root is None:
        raise ControlPlaneError(
            "no control-plane binaries: set BREAKWATER_CONTROL_PLANE_BIN (or KUBEBUILDER_ASSETS with "
            "a source checkout), or BREAKWATER_TEST_KUBECONFIG to use an existing cluster"
        )
    script = root / "hack" / "build-control-plane.sh"
    if not build:
        # Ask the script for the directory without building anything missing.
        env = {**os.environ, "BREAKWATER_BUILD_DRY_RUN": "1"}
        out = subprocess.run(["bash", str(script)], capture_output=True, text=True, env=env, check=False)
    else:
        out = subprocess.run(["bash", str(script)], stdout=subprocess.PIPE, text=True, check=False)
    if out.returncode != 0 or not out.stdout.strip():
        detail = (out.stderr or "").strip().splitlines()[-3:] if not build else []
        raise ControlPlaneError(
            f"control-plane binaries unavailable ({script} exited {out.returncode}) {' '.join(detail)}"
        )
    return Path(out.stdout.strip().splitlines()[-1])


def free_port() -> int:
    """A loopback port free for TCP and for UDP: the report channel listens on one number for both,
    and a port the kernel hands out for TCP may be some client's ephemeral UDP port at that moment."""
    for _ in range(100):
        with (
            socket.socket(socket.AF_INET, socket.SOCK_STREAM) as tcp,
            socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as udp,
        ):
            tcp.bind(("127.0.0.1", 0))
            port = int(tcp.getsockname()[1])
            try:
                udp.bind(("127.0.0.1", port))
            except OSError:
                continue
            return port
    raise RuntimeError("no loopback port free for both TCP and UDP in 100 tries")


@dataclass
class _Component:
    name: str
    process: subprocess.Popen[bytes]
    log_path: Path


@dataclass
class ControlPlane:
    """A running control plane; use as a context manager or call start()/stop()."""

    bin_dir: Path
    workdir: Path = field(default_factory=lambda: Path(tempfile.mkdtemp(prefix="breakwater-cp-")))
    node_name: str = NODE_NAME
    pod_cidr: str = ""
    node_ip: str = ""
    controller_manager_args: tuple[str, ...] = ()  # extra flags, e.g. a higher client rate for benchmarks
    components: list[_Component] = field(default_factory=list)
    apiserver_port: int = 0
    # A real node's namespace: every component runs inside it, kwok does not run, and the API server
    # advertises (and the `kubernetes` Service points at) the node IP.
    netns: NetworkNamespace | None = None
    kwok: bool = True
    ca: pki.CertificateAuthority | None = None
    # The API server's audit log (`breakwater.testing.audit`): every request at level Metadata, as
    # JSON lines in `audit_log`. Off unless asked: it costs a write per request.
    audit: bool = False

    def __post_init__(self) -> None:
        if not self.pod_cidr:
            self.pod_cidr, self.node_ip = random_pod_cidr()
        elif not self.node_ip:
            self.node_ip = str(ipaddress.ip_network(self.pod_cidr).network_address + 1)

    @property
    def kubeconfig(self) -> Path:
        return self.workdir / "admin.kubeconfig"

    @property
    def server(self) -> str:
        return f"https://127.0.0.1:{self.apiserver_port}"

    @property
    def ca_file(self) -> Path:
        return self.workdir / "ca.crt"

    @property
    def audit_log(self) -> Path:
        return self.workdir / "audit.log"

    def _audit_args(self) -> list[str]:
        if not self.audit:
            return []
        policy = self.workdir / "audit-policy.yaml"
        policy.write_text(audit.POLICY)
        return [
            f"--audit-policy-file={policy}",
            f"--audit-log-path={self.audit_log}",
            "--audit-log-format=json",
            "--audit-log-mode=blocking",
            "--audit-log-maxsize=0",  # never rotated: a test reads one file
        ]

    def binary(self, name: str) -> str:
        return str(self.bin_dir / name)

    def __enter__(self) -> ControlPlane:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # -- start -------------------------------------------------------------------------------------

    def start(self, *, timeout: float = 90.0) -> None:
        started = time.monotonic()
        try:
            self._write_pki()
            etcd_port = self._start_etcd()
            self._start_apiserver(etcd_port)
            if self.netns is not None:
                self._start_forwarder()
            self._wait_ready(timeout=timeout)
            self._start_controller_manager()
            if self.kwok:
                self._create_node()
                self._start_kwok()
        except BaseException as exc:
            self.print_logs()
            self.stop()
            if isinstance(exc, ControlPlaneError):
                raise
            if isinstance(exc, Exception):
                raise ControlPlaneError(f"control plane failed to start: {exc}") from exc
            raise
        logger.info("control plane ready at %s in %.1f s", self.server, time.monotonic() - started)

    def _write_pki(self) -> None:
        ca = pki.CertificateAuthority()
        self.ca_file.write_bytes(ca.cert_pem)
        self.ca = ca  # a real node's kubelet and kube-proxy get their client certificates from it
        node_ips = (self.netns.node_ip,) if self.netns is not None else ()
        ca.issue(
            "kube-apiserver",
            ips=("127.0.0.1", "10.96.0.1", *node_ips),
            dns_names=("localhost", "kubernetes", "kubernetes.default", "kubernetes.default.svc"),
            server=True,
        ).write(self.workdir, "apiserver")
        ca.issue("breakwater-admin", organizations=("system:masters",), client=True).write(
            self.workdir, "admin"
        )
        pki.service_account_keys().write(self.workdir, "sa")
        self.apiserver_port = free_port()
        self.kubeconfig.write_text(
            "\n".join(
                [
                    "apiVersion: v1",
                    "kind: Config",
                    "clusters:",
                    "- name: breakwater-test",
                    "  cluster:",
                    f"    server: {self.server}",
                    f"    certificate-authority: {self.ca_file}",
                    "users:",
                    "- name: admin",
                    "  user:",
                    f"    client-certificate: {self.workdir / 'admin.crt'}",
                    f"    client-key: {self.workdir / 'admin.key'}",
                    "contexts:",
                    "- name: breakwater-test",
                    "  context: {cluster: breakwater-test, user: admin}",
                    "current-context: breakwater-test",
                    "",
                ]
            )
        )

    def spawn(
        self, name: str, args: list[str], *, command: list[str] | None = None, in_netns: bool = True
    ) -> _Component:
        """Start a component (in the node's namespace, if any) that stops with the control plane."""
        log_path = self.workdir / f"{name}.log"
        prefix = self.netns.nsenter() if self.netns is not None and in_netns else []
        with log_path.open("wb") as log:
            process = subprocess.Popen(
                [*prefix, *(command or [self.binary(name)]), *args],
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                cwd=self.workdir,
                preexec_fn=processes.die_with_parent,
            )
        component = _Component(name, process, log_path)
        self.components.append(component)
        return component

    def _start_etcd(self) -> int:
        client, peer = free_port(), free_port()
        self.spawn(
            "etcd",
            [
                "--name=default",
                f"--data-dir={self.workdir / 'etcd'}",
                f"--listen-client-urls=http://127.0.0.1:{client}",
                f"--advertise-client-urls=http://127.0.0.1:{client}",
                f"--listen-peer-urls=http://127.0.0.1:{peer}",
                f"--initial-advertise-peer-urls=http://127.0.0.1:{peer}",
                f"--initial-cluster=default=http://127.0.0.1:{peer}",
                "--listen-metrics-urls=",
                "--unsafe-no-fsync",
                "--log-level=warn",
            ],
        )
        return client

    def _node_apiserver_args(self) -> list[str]:
        """What a real node needs of the API server: pods reach it at the node IP through the
        `kubernetes` Service (lease reconciler), kubelets are authorized as nodes, and logs/exec reach
        the kubelet at the node's InternalIP with a client certificate."""
        if self.netns is None:
            loopback = ["--bind-address=127.0.0.1", "--advertise-address=127.0.0.1"]
            return [*loopback, "--endpoint-reconciler-type=none"]
        w = self.workdir
        return [
            "--bind-address=0.0.0.0",
            f"--advertise-address={self.netns.node_ip}",
            "--endpoint-reconciler-type=lease",
            "--authorization-mode=Node,RBAC",
            "--kubelet-preferred-address-types=InternalIP",
            f"--kubelet-client-certificate={w / 'admin.crt'}",
            f"--kubelet-client-key={w / 'admin.key'}",
        ]

    def _start_apiserver(self, etcd_port: int) -> None:
        w = self.workdir
        self.spawn(
            "kube-apiserver",
            [
                f"--etcd-servers=http://127.0.0.1:{etcd_port}",
                *self._node_apiserver_args(),
                f"--secure-port={self.apiserver_port}",
                f"--tls-cert-file={w / 'apiserver.crt'}",
                f"--tls-private-key-file={w / 'apiserver.key'}",
                f"--client-ca-file={self.ca_file}",
                "--service-account-issuer=https://kubernetes.default.svc.cluster.local",
                f"--service-account-key-file={w / 'sa.crt'}",
                f"--service-account-signing-key-file={w / 'sa.key'}",
                f"--service-cluster-ip-range={SERVICE_CIDR}",
                *(["--authorization-mode=RBAC"] if self.netns is None else []),
                "--allow-privileged=true",
                f"--cert-dir={w / 'apiserver-certs'}",
                "--enable-priority-and-fairness=false",
                "--profiling=false",
                *self._audit_args(),
                "--v=1",
            ],
        )

    def _start_forwarder(self) -> None:
        assert self.netns is not None
        self.spawn(
            "portforward",
            ["--netns", str(self.netns.path), "--port", str(self.apiserver_port)],
            command=[sys.executable, "-m", "breakwater.testing.portforward"],
            in_netns=False,  # it joins the namespace itself, after binding the host's loopback
        )

    def _ssl_context(self) -> ssl.SSLContext:
        ctx = ssl.create_default_context(cafile=str(self.ca_file))
        ctx.load_cert_chain(self.workdir / "admin.crt", self.workdir / "admin.key")
        return ctx

    def _wait_ready(self, *, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        ctx = self._ssl_context()
        last_error = ""
        while time.monotonic() < deadline:
            for component in self.components:
                if component.process.poll() is not None:
                    raise ControlPlaneError(
                        f"{component.name} exited with {component.process.returncode} during start-up"
                    )
            try:
                with urllib.request.urlopen(f"{self.server}/readyz", context=ctx, timeout=2) as resp:
                    if resp.status == 200:
                        return
            except (urllib.error.URLError, OSError) as exc:
                last_error = str(exc)
            time.sleep(0.2)
        raise ControlPlaneError(f"kube-apiserver not ready after {timeout:.0f} s: {last_error}")

    def _start_controller_manager(self) -> None:
        w = self.workdir
        self.spawn(
            "kube-controller-manager",
            [
                f"--kubeconfig={self.kubeconfig}",
                "--leader-elect=false",
                "--bind-address=127.0.0.1",
                f"--secure-port={free_port()}",
                f"--root-ca-file={self.ca_file}",
                f"--service-account-private-key-file={w / 'sa.key'}",
                "--use-service-account-credentials=false",
                "--controllers=*,-nodeipam,-service-lb-controller,-cloud-node-lifecycle-controller",
                "--node-monitor-grace-period=120s",
                "--v=1",
                *self.controller_manager_args,
            ],
        )

    def kubectl(self, *args: str, input: str | None = None, check: bool = True) -> str:
        proc = subprocess.run(
            [self.binary("kubectl"), f"--kubeconfig={self.kubeconfig}", *args],
            input=input,
            capture_output=True,
            text=True,
            check=False,
        )
        if check and proc.returncode != 0:
            raise ControlPlaneError(f"kubectl {' '.join(args)} failed: {proc.stderr.strip()}")
        return proc.stdout

    def _create_node(self) -> None:
        manifest = f"""
apiVersion: v1
kind: Node
metadata:
  name: {self.node_name}
  annotations: {{kwok.x-k8s.io/node: fake, node.alpha.kubernetes.io/ttl: "0"}}
  labels: {{type: kwok, kubernetes.io/hostname: {self.node_name}, kubernetes.io/os: linux}}
spec:
  podCIDR: {self.pod_cidr}
  podCIDRs: [{self.pod_cidr}]
"""
        self.kubectl("apply", "-f", "-", input=manifest)

    def _start_kwok(self) -> None:
        self.spawn(
            "kwok",
            [
                f"--kubeconfig={self.kubeconfig}",
                "--manage-nodes-with-annotation-selector=kwok.x-k8s.io/node=fake",
                f"--cidr={self.pod_cidr}",
                f"--node-ip={self.node_ip}",
                f"--server-address=127.0.0.1:{free_port()}",
                f"--config={self.bin_dir / 'kwok-stages.yaml'}",
            ],
        )
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            ready = self.kubectl(
                "get",
                "node",
                self.node_name,
                "-o",
                "jsonpath={.status.conditions[?(@.type=='Ready')].status}",
                check=False,
            )
            if ready.strip() == "True":
                return
            if self.components[-1].process.poll() is not None:
                raise ControlPlaneError("kwok exited during start-up")
            time.sleep(0.2)
        raise ControlPlaneError(f"kwok did not mark node {self.node_name} Ready within 30 s")

    # -- stop --------------------------------------------------------------------------------------

    def print_logs(self, *, lines: int = 25, stream: TextIO | None = None) -> None:
        out = stream if stream is not None else sys.stderr
        for component in self.components:
            with contextlib.suppress(OSError):
                tail = component.log_path.read_text(errors="replace").splitlines()[-lines:]
                print(f"--- {component.name} (last {len(tail)} lines of its log) ---", file=out)
                print("\n".join(tail), file=out)

    def stop(self) -> None:
        # kube-apiserver's graceful termination outlasts 15 s after SIGTERM (it drains watches), and
        # nothing of this throwaway control plane is kept (its etcd data goes with the work directory).
        processes.stop_all([c.process for c in reversed(self.components)], sig=signal.SIGKILL, timeout=5)
        self.components.clear()
        shutil.rmtree(self.workdir, ignore_errors=True)


@contextlib.contextmanager
def running_control_plane(*, build: bool = True) -> Iterator[ControlPlane]:
    with ControlPlane(bin_dir=find_binaries(build=build)) as control_plane:
        yield control_plane
