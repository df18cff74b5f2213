"""Shared parts of the operator benchmarks: a control plane sized for thousands of kwok pods, the real
operator as a process, an async API client (admin certificate), pod-bound tokens, simulated sidecars,
/proc sampling, API-server metrics and result files.

Everything talks to 127.0.0.0/8 only. Every process started here is stopped by `Bench.close()`, which
the scripts run in a `finally`, and the control plane's processes die with their parent anyway.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import datetime
import json
import math
import os
import platform
import random
import shlex
import signal
import ssl
import subprocess
import sys
import tempfile
import time
import urllib.parse
import uuid
from collections.abc import AsyncIterator, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
from prometheus_client.parser import text_string_to_metric_families

from breakwater.api import datagram
from breakwater.api.constants import ANNOTATION_INJECTED, NAMESPACE_LABEL, SIDECAR_NAME, TOKEN_AUDIENCE
from breakwater.api.crdgen import crd_yaml
from breakwater.testing.controlplane import ControlPlane, _die_with_parent, find_binaries, free_port

REPO = Path(__file__).resolve().parents[2]
RESULTS = REPO / "bench" / "results"
GROUP_PATH = "/apis/breakwater.dev/v1alpha1"
CLK_TCK = os.sysconf("SC_CLK_TCK")
BIG_POD_POOL = range(16, 32)  # 127.16.0.0/12: a benchmark takes a random /16 of it (65,534 pod IPs)


# -- numbers -----------------------------------------------------------------------------------------


def percentile(values: Sequence[float], q: float) -> float:
    """Linear interpolation between closest ranks (numpy's default); NaN for no values."""
    if not values:
        return math.nan
    ordered = sorted(values)
    pos = (len(ordered) - 1) * q / 100
    lo, hi = math.floor(pos), math.ceil(pos)
    return ordered[lo] + (ordered[hi] - ordered[lo]) * (pos - lo)


def summary(values: Sequence[float], *, scale: float = 1.0, digits: int = 3) -> dict[str, Any]:
    def r(x: float) -> float | None:
        return None if math.isnan(x) else round(x * scale, digits)

    return {
        "n": len(values),
        "p50": r(percentile(values, 50)),
        "p90": r(percentile(values, 90)),
        "p95": r(percentile(values, 95)),
        "p99": r(percentile(values, 99)),
        "max": r(max(values)) if values else None,
        "mean": r(sum(values) / len(values)) if values else None,
    }


# -- the machine and result files ----------------------------------------------------------------


def machine_facts() -> dict[str, Any]:
    cpu = ""
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    commit = subprocess.run(
        ["git", "-C", str(REPO), "rev-parse", "--short", "HEAD"], capture_output=True, text=True, check=False
    ).stdout.strip()
    return {
        "nproc": os.cpu_count(),
        "cpu": cpu,
        "memory_gib": round(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30, 1),
        "loadavg_start": Path("/proc/loadavg").read_text().split()[:3],
        "python": platform.python_version(),
        "kernel": platform.release(),
        "commit": commit,
        "date": datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
    }


def command_line() -> str:
    return " ".join([".venv/bin/python", *(shlex.quote(a) for a in sys.argv)])


def write_results(
    stem: str, *, title: str, machine: dict[str, Any], body_md: str, data: dict[str, Any]
) -> None:
    machine = {**machine, "loadavg_end": Path("/proc/loadavg").read_text().split()[:3]}
    RESULTS.mkdir(parents=True, exist_ok=True)
    cmd = command_line()
    facts = (
        f"nproc {machine['nproc']} ({machine['cpu']}), {machine['memory_gib']} GiB, "
        f"Python {machine['python']}, "
        f"commit {machine['commit']}, {machine['date']}; load average (1/5/15 min) at start "
        f"{' '.join(machine['loadavg_start'])}, at end {' '.join(machine['loadavg_end'])}"
    )
    md = f"Command: `{cmd}`\n\n# {title}\n\nMachine: {facts}.\n\n{body_md.strip()}\n"
    (RESULTS / f"{stem}.md").write_text(md)
    (RESULTS / f"{stem}.json").write_text(
        json.dumps({"command": cmd, "machine": machine, **data}, indent=2, sort_keys=False) + "\n"
    )
    print(md)


def md_table(headers: Sequence[str], rows: Iterable[Sequence[Any]]) -> str:
    def cell(v: Any) -> str:
        if v is None or (isinstance(v, float) and math.isnan(v)):
            return "-"
        return str(v)

    out = ["| " + " | ".join(headers) + " |", "|" + "|".join("---" for _ in headers) + "|"]
    out += ["| " + " | ".join(cell(v) for v in row) + " |" for row in rows]
    return "\n".join(out)


def log(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


# -- /proc ---------------------------------------------------------------------------------------------


def cpu_seconds(pid: int) -> float:
    """user + system CPU of a process (all its threads), in seconds."""
    fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
    return (int(fields[11]) + int(fields[12])) / CLK_TCK  # utime, stime (fields 14 and 15)


def memory_mib(pid: int) -> tuple[float, float]:
    """(VmRSS, VmHWM) in MiB."""
    rss = hwm = 0.0
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            rss = int(line.split()[1]) / 1024
        elif line.startswith("VmHWM:"):
            hwm = int(line.split()[1]) / 1024
    return rss, hwm


def udp_drops(port: int) -> int:
    """Datagrams the kernel dropped for the UDP socket(s) bound to `port` (receive buffer full)."""
    total = 0
    for table in ("/proc/net/udp", "/proc/net/udp6"):
        with contextlib.suppress(OSError):
            for line in Path(table).read_text().splitlines()[1:]:
                fields = line.split()
                if int(fields[1].rsplit(":", 1)[1], 16) == port:
                    total += int(fields[-1])
    return total


def loadavg() -> list[str]:
    return Path("/proc/loadavg").read_text().split()[:3]


@dataclass
class CpuWindow:
    """CPU and wall time of one process between `start()` and `stop()`."""

    pid: int
    cpu0: float = 0.0
    wall0: float = 0.0
    cpu: float = 0.0
    wall: float = 0.0

    def start(self) -> CpuWindow:
        self.cpu0, self.wall0 = cpu_seconds(self.pid), time.monotonic()
        return self

    def stop(self) -> CpuWindow:
        self.cpu = cpu_seconds(self.pid) - self.cpu0
        self.wall = time.monotonic() - self.wall0
        return self

    @property
    def percent(self) -> float:
        return round(100 * self.cpu / self.wall, 1) if self.wall else math.nan


# -- the control plane -------------------------------------------------------------------------------


@dataclass
class BenchControlPlane(ControlPlane):
    """The test control plane with a kube-controller-manager allowed to create pods quickly.

    The default client rate of kube-controller-manager (20 qps, burst 30) would take 8 minutes to
    create 10,000 pods; the benchmarks raise it (a bench-only subclass: nothing else changes).
    """

    kcm_qps: int = 400

    def __post_init__(self) -> None:
        super().__post_init__()
        self.controller_manager_args = (
            f"--kube-api-qps={self.kcm_qps}",
            f"--kube-api-burst={2 * self.kcm_qps}",
            "--concurrent-replicaset-syncs=20",
            "--concurrent-deployment-syncs=20",
        )

    @property
    def pids(self) -> dict[str, int]:
        return {c.name: c.process.pid for c in self.components}


def start_control_plane(*, big: bool = False) -> BenchControlPlane:
    started = time.monotonic()
    cp = BenchControlPlane(bin_dir=find_binaries(build=True))
    if big:  # more than a /24's worth of pods; a random /16 so two benchmarks can run side by side
        second = random.choice(BIG_POD_POOL)
        cp.pod_cidr, cp.node_ip = f"127.{second}.0.0/16", f"127.{second}.0.1"
    cp.start()
    cp.kubectl("apply", "--server-side", "--force-conflicts", "-f", "-", input=crd_yaml())
    cp.kubectl(
        "wait", "--for=condition=Established", "crd/circuitbreakerpolicies.breakwater.dev", "--timeout=30s"
    )
    node_cidr = cp.kubectl("get", "node", cp.node_name, "-o", "jsonpath={.spec.podCIDR}")
    log(f"control plane up in {time.monotonic() - started:.1f} s (node podCIDR {node_cidr})")
    return cp


# -- the operator ------------------------------------------------------------------------------------


@dataclass
class Operator:
    """`breakwater operator` as a child process (the same flags the cluster tests use)."""

    kubeconfig: Path
    workdir: Path
    extra_args: tuple[str, ...] = ()
    launcher: tuple[str, ...] = ("-m", "breakwater.cli")  # or (traced_cli.py,) for memory attribution
    webhook_port: int = field(default_factory=free_port)
    liveness_port: int = field(default_factory=free_port)
    report_port: int = field(default_factory=free_port)
    configuration: str = field(default_factory=lambda: f"breakwater-bench-{uuid.uuid4().hex[:6]}")
    env: dict[str, str] = field(default_factory=dict)  # e.g. PYTHONPATH of another checkout to compare
    process: subprocess.Popen[bytes] | None = None

    @property
    def report_url(self) -> str:
        return f"https://127.0.0.1:{self.report_port}"

    @property
    def log_path(self) -> Path:
        return self.workdir / "operator.log"

    @property
    def pid(self) -> int:
        assert self.process is not None
        return self.process.pid

    def start(self, kubectl: Any, timeout: float = 60) -> None:
        args = [
            sys.executable, *self.launcher, "operator",
            f"--kubeconfig={self.kubeconfig}",
            f"--webhook-listen=127.0.0.1:{self.webhook_port}",
            f"--webhook-url=https://127.0.0.1:{self.webhook_port}",
            f"--webhook-configuration={self.configuration}",
            f"--liveness=127.0.0.1:{self.liveness_port}",
            f"--report-listen=127.0.0.1:{self.report_port}",
            f"--report-url={self.report_url}",
            "--operator-namespace=breakwater-system",
            "--sidecar-image=registry.example/breakwater:bench",
            f"--webhook-cert-dir={self.workdir / 'certs'}",
            *self.extra_args,
        ]  # fmt: skip
        out = self.log_path.open("ab")
        self.process = subprocess.Popen(
            args,
            stdout=out,
            stderr=subprocess.STDOUT,
            env={**os.environ, "PYTHONUNBUFFERED": "1", **self.env},
            preexec_fn=_die_with_parent,  # never outlives the benchmark, even when it is killed
        )
        deadline = time.monotonic() + timeout
        import urllib.request

        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"operator exited with {self.process.returncode}:\n{self.tail()}")
            with contextlib.suppress(OSError):
                with urllib.request.urlopen(f"http://127.0.0.1:{self.liveness_port}/healthz", timeout=1):
                    pass
                got = kubectl(
                    "get", "mutatingwebhookconfiguration", self.configuration, "-o", "name", check=False
                )
                if got.strip():
                    log(f"operator ready (pid {self.process.pid})")
                    return
            time.sleep(0.2)
        raise RuntimeError(f"operator not ready within {timeout} s:\n{self.tail()}")

    def stop(self) -> None:
        if self.process is None:
            return
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self.process = None

    def tail(self, lines: int = 40) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""

    def ca_pem(self) -> str:
        return (self.workdir / "certs" / "ca.crt").read_text()

    def count_log(self, needle: str) -> int:
        try:
            return self.log_path.read_text(errors="replace").count(needle)
        except OSError:
            return 0


# -- the API, asynchronously, with the admin certificate --------------------------------------------


class Api:
    """A small aiohttp client for the API server (admin client certificate)."""

    def __init__(self, cp: ControlPlane, *, limit: int = 64) -> None:
        self.server = cp.server
        ctx = ssl.create_default_context(cafile=str(cp.ca_file))
        ctx.load_cert_chain(cp.workdir / "admin.crt", cp.workdir / "admin.key")
        self.ssl = ctx
        self.session = aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(ssl=ctx, limit=limit),
            timeout=aiohttp.ClientTimeout(total=120),
        )

    async def close(self) -> None:
        await self.session.close()

    async def request(
        self,
        method: str,
        path: str,
        body: Any = None,
        *,
        content_type: str = "application/json",
        ok: Sequence[int] = (),
    ) -> Any:
        data = json.dumps(body) if body is not None else None
        headers = {"Content-Type": content_type} if body is not None else {}
        async with self.session.request(method, self.server + path, data=data, headers=headers) as resp:
            text = await resp.text()
            if resp.status >= 300 and resp.status not in ok:
                raise RuntimeError(f"{method} {path}: {resp.status} {text[:300]}")
            return json.loads(text) if text else None

    async def get(self, path: str) -> Any:
        return await self.request("GET", path)

    async def post(self, path: str, body: Any, *, ok: Sequence[int] = ()) -> Any:
        return await self.request("POST", path, body, ok=ok)

    async def patch(self, path: str, body: Any) -> Any:
        return await self.request("PATCH", path, body, content_type="application/merge-patch+json")

    async def metrics_text(self) -> str:
        async with self.session.get(self.server + "/metrics") as resp:
            return await resp.text()

    async def watch(
        self, path: str, *, resource_version: str = ""
    ) -> AsyncIterator[tuple[float, dict[str, Any]]]:
        """Yield (monotonic arrival time, event) from a watch stream."""
        sep = "&" if "?" in path else "?"
        url = f"{self.server}{path}{sep}watch=1&allowWatchBookmarks=false"
        if resource_version:
            url += f"&resourceVersion={resource_version}"
        timeout = aiohttp.ClientTimeout(total=None, sock_read=None)
        async with self.session.get(url, timeout=timeout) as resp:
            buffer = b""
            async for chunk in resp.content.iter_any():
                now = time.monotonic()
                buffer += chunk
                while b"\n" in buffer:
                    line, buffer = buffer.split(b"\n", 1)
                    if line.strip():
                        yield now, json.loads(line)

    # conveniences ----------------------------------------------------------------------------------

    async def namespace(self, name: str, *, opted_in: bool = True) -> None:
        labels = {NAMESPACE_LABEL: "enabled"} if opted_in else {}
        await self.post(
            "/api/v1/namespaces",
            {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": name, "labels": labels}},
            ok=(409,),
        )

    async def wait_service_account(self, namespace: str, limit: float = 60) -> None:
        deadline = time.monotonic() + limit
        while time.monotonic() < deadline:
            got = await self.request(
                "GET", f"/api/v1/namespaces/{namespace}/serviceaccounts/default", ok=(404,)
            )
            if got and got.get("kind") == "ServiceAccount":
                return
            await asyncio.sleep(0.2)
        raise RuntimeError(f"no default ServiceAccount in {namespace}")

    async def pods(self, namespace: str = "", selector: str = "") -> list[dict[str, Any]]:
        path = f"/api/v1/namespaces/{namespace}/pods" if namespace else "/api/v1/pods"
        items: list[dict[str, Any]] = []
        cont = ""
        while True:
            query = f"?limit=2000&labelSelector={selector}" + (f"&continue={cont}" if cont else "")
            page = await self.get(path + query)
            items += page["items"]
            cont = page["metadata"].get("continue", "")
            if not cont:
                return items

    async def running_pod_metadata(self) -> list[dict[str, Any]]:
        """Metadata of every Running pod (PartialObjectMetadata): cheap enough to poll at 10,000 pods."""
        items: list[dict[str, Any]] = []
        cont = ""
        headers = {"Accept": "application/json;as=PartialObjectMetadataList;g=meta.k8s.io;v=v1"}
        while True:
            query = "?limit=5000&fieldSelector=status.phase%3DRunning" + (f"&continue={cont}" if cont else "")
            async with self.session.get(self.server + "/api/v1/pods" + query, headers=headers) as resp:
                text = await resp.text()
                if resp.status >= 300:
                    raise RuntimeError(f"GET pods metadata: {resp.status} {text[:300]}")
            page = json.loads(text)
            items += [item["metadata"] for item in page.get("items") or ()]
            cont = page["metadata"].get("continue", "")
            if not cont:
                return items

    async def token(self, namespace: str, pod: str, uid: str, *, seconds: int = 3600) -> str:
        body = {
            "apiVersion": "authentication.k8s.io/v1",
            "kind": "TokenRequest",
            "spec": {
                "audiences": [TOKEN_AUDIENCE],
                "expirationSeconds": seconds,
                "boundObjectRef": {"kind": "Pod", "apiVersion": "v1", "name": pod, "uid": uid},
            },
        }
        got = await self.post(f"/api/v1/namespaces/{namespace}/serviceaccounts/default/token", body)
        return str(got["status"]["token"])

    async def policy(self, namespace: str, name: str) -> dict[str, Any]:
        got: dict[str, Any] = await self.get(
            f"{GROUP_PATH}/namespaces/{namespace}/circuitbreakerpolicies/{name}"
        )
        return got


def injected_metadata(metas: Iterable[dict[str, Any]]) -> list[dict[str, Any]]:
    """The pods (metadata) the webhook injected, not being deleted."""
    return [
        m
        for m in metas
        if (m.get("annotations") or {}).get(ANNOTATION_INJECTED) == "true" and not m.get("deletionTimestamp")
    ]


def running_injected(pods: Iterable[dict[str, Any]]) -> list[dict[str, Any]]:
    return [
        p
        for p in pods
        if p["status"].get("phase") == "Running"
        and p["status"].get("podIP")
        and any(c["name"] == SIDECAR_NAME for c in p["spec"]["containers"])
        and not p["metadata"].get("deletionTimestamp")
    ]


# -- API-server metrics --------------------------------------------------------------------------------


def parse_metrics(text: str) -> dict[str, list[tuple[dict[str, str], float]]]:
    out: dict[str, list[tuple[dict[str, str], float]]] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            out.setdefault(sample.name, []).append((dict(sample.labels), float(sample.value)))
    return out


def metric_sum(metrics: dict[str, list[tuple[dict[str, str], float]]], name: str, **labels: str) -> float:
    return sum(v for lab, v in metrics.get(name, ()) if all(lab.get(k) == want for k, want in labels.items()))


def request_counts(metrics: dict[str, list[tuple[dict[str, str], float]]]) -> dict[str, float]:
    """The API-server request counters the operator benchmarks care about."""
    m = "apiserver_request_total"
    return {
        "status_patches": metric_sum(
            metrics, m, resource="circuitbreakerpolicies", subresource="status", verb="PATCH"
        ),
        "policy_patches": metric_sum(
            metrics, m, resource="circuitbreakerpolicies", subresource="", verb="PATCH"
        ),
        "tokenreviews": metric_sum(metrics, m, resource="tokenreviews", verb="POST"),
        "events": metric_sum(metrics, m, resource="events", verb="POST")
        + metric_sum(metrics, m, resource="events", verb="PATCH"),
        "configmap_writes": metric_sum(metrics, m, resource="configmaps", verb="PATCH")
        + metric_sum(metrics, m, resource="configmaps", verb="PUT")
        + metric_sum(metrics, m, resource="configmaps", verb="POST"),
        "all": metric_sum(metrics, m),
    }


# -- manifests -------------------------------------------------------------------------------------------


def policy_body(
    name: str,
    *,
    app: str,
    port: int = 8080,
    host: str = "127.0.0.1",
    upstream: str = "payments",
    failures: int = 3,
    open_for: str = "1s",
    timeout: str = "2s",
) -> dict[str, Any]:
    return {
        "apiVersion": "breakwater.dev/v1alpha1",
        "kind": "CircuitBreakerPolicy",
        "metadata": {"name": name},
        "spec": {
            "selector": {"matchLabels": {"app": app}},
            "upstreams": [{"name": upstream, "host": host, "port": port, "listenPort": 15001}],
            "trip": {"consecutiveFailures": failures},
            "open": {"duration": open_for, "maxDuration": "5m", "jitter": 0},
            "halfOpen": {"permittedCalls": 1, "successesToClose": 1},
            "timeout": timeout,
        },
    }


def pod_template(app: str, node: str) -> dict[str, Any]:
    return {
        "metadata": {"labels": {"app": app}},
        "spec": {
            "nodeName": node,
            "terminationGracePeriodSeconds": 0,
            "containers": [{"name": "app", "image": "registry.example/app:1"}],
        },
    }


def deployment_body(name: str, *, app: str, node: str, replicas: int) -> dict[str, Any]:
    template = pod_template(app, node)
    template["metadata"]["labels"]["deployment"] = name
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": name},
        "spec": {
            "replicas": replicas,
            "selector": {"matchLabels": {"app": app, "deployment": name}},
            "template": template,
        },
    }


async def gather_limited(coros: Iterable[Any], limit: int) -> list[Any]:
    sem = asyncio.Semaphore(limit)

    async def one(c: Any) -> Any:
        async with sem:
            return await c

    return list(await asyncio.gather(*(one(c) for c in coros)))


# -- simulated sidecars ----------------------------------------------------------------------------------


@dataclass
class SimPod:
    """One kwok pod and what a simulated sidecar for it knows and sends."""

    namespace: str
    name: str
    uid: str
    ip: str
    token: str = ""
    policy: str = ""  # namespace/name of the policy that selects it
    upstream: str = "payments"
    state: str = "Closed"
    state_since: float = field(default_factory=time.time)
    trips: int = 0
    calls: int = 0
    failures: int = 0
    seq: int = 0
    config_hash: str = ""
    pending: list[dict[str, Any]] = field(default_factory=list)
    carried_seq: int = -1

    def transition(self, to_state: str, *, reason: str = "bench") -> float:
        at = time.time()
        self.pending.append(
            {
                "upstream": self.upstream,
                "policy": self.policy,
                "fromState": self.state,
                "toState": to_state,
                "reason": reason,
                "at": at,
            }
        )
        if to_state == "Open":
            self.trips += 1
        self.state, self.state_since = to_state, at
        return at

    def report(self) -> bytes:
        self.seq += 1
        self.calls += 50
        failures = random.randint(0, 5)
        self.failures += failures
        transitions = self.pending  # kept until an answer to this report arrives, like a real sidecar
        self.carried_seq = self.seq
        return json.dumps(
            {
                "version": 1,
                "namespace": self.namespace,
                "pod": self.name,
                "podUid": self.uid,
                "configHash": self.config_hash,
                "seq": self.seq,
                "sentAt": time.time(),
                "upstreams": [
                    {
                        "name": self.upstream,
                        "policy": self.policy,
                        "state": self.state,
                        "mode": "Enforce",
                        "calls": self.calls,
                        "failures": self.failures,
                        "rejections": 0,
                        "wouldReject": 0,
                        "trips": self.trips,
                        "windowCalls": 50,
                        "failureRate": failures / 50,
                        "slowRate": 0.0,
                        "stateSince": self.state_since,
                    }
                ],
                "transitions": transitions,
            }
        ).encode()


class _SimEndpoint(asyncio.DatagramProtocol):
    def __init__(self, fleet: SimFleet, pod: SimPod) -> None:
        self.fleet, self.pod = fleet, pod

    def datagram_received(self, data: bytes, addr: tuple[str, int]) -> None:
        self.fleet.answered(self.pod, data)


@dataclass
class SimFleet:
    """Simulated sidecars speaking the real report channel: a session per pod over HTTPS with its
    pod-bound token, then signed report datagrams from one UDP socket per pod, answered by the operator."""

    url: str
    ca_pem: str
    pods: list[SimPod]
    interval: float = 5.0
    session_concurrency: int = 16
    post_latencies: list[float] = field(default_factory=list)  # report sent -> its answer arrived
    transition_latencies: list[float] = field(default_factory=list)  # transition -> answer arrived
    config_notices: list[tuple[str, float]] = field(default_factory=list)  # (hash, when) unasked answers
    fetch_on_notice: bool = False  # fetch the config when told it changed, as a real sidecar does
    fetched: dict[str, dict[str, float]] = field(default_factory=dict)  # hash -> pod -> when it arrived
    errors: dict[str, int] = field(default_factory=dict)
    sent: int = 0
    _tasks: list[asyncio.Task[None]] = field(default_factory=list)
    _http: aiohttp.ClientSession | None = None
    _wake: dict[str, asyncio.Event] = field(default_factory=dict)
    _keys: dict[str, tuple[str, bytes, asyncio.DatagramTransport]] = field(default_factory=dict)
    _inflight: dict[str, tuple[int, float, float | None]] = field(default_factory=dict)
    _gate: asyncio.Semaphore | None = None
    _stop: bool = False

    def _context(self) -> ssl.SSLContext:
        ctx = ssl.create_default_context(cadata=self.ca_pem)
        ctx.check_hostname = False  # the serving certificate names 127.0.0.1 as an IP SAN; keep it simple
        return ctx

    def _error(self, key: str) -> None:
        self.errors[key] = self.errors.get(key, 0) + 1

    async def open_session(self, pod: SimPod) -> bool:
        assert self._http is not None
        assert self._gate is not None
        ask = {"namespace": pod.namespace, "pod": pod.name, "podUid": pod.uid}
        headers = {"Authorization": f"Bearer {pod.token}", "Content-Type": "application/json"}
        async with self._gate:
            try:
                url = self.url + datagram.SESSION_PATH
                async with self._http.post(url, data=json.dumps(ask), headers=headers) as r:
                    text = await r.text()
                    if r.status != 200:
                        self._error(f"session http {r.status}")
                        return False
            except (aiohttp.ClientError, OSError, TimeoutError) as exc:
                self._error(f"session {type(exc).__name__}")
                return False
        grant = json.loads(text)
        host = urllib.parse.urlsplit(self.url).hostname or "127.0.0.1"
        transport, _ = await asyncio.get_running_loop().create_datagram_endpoint(
            lambda: _SimEndpoint(self, pod), remote_addr=(host, int(grant["port"]))
        )
        old = self._keys.get(pod_key(pod))
        if old is not None:
            old[2].close()
        self._keys[pod_key(pod)] = (grant["session"], base64.b64decode(grant["key"]), transport)
        return True

    def send(self, pod: SimPod) -> None:
        found = self._keys.get(pod_key(pod))
        if found is None:
            return
        session_id, key, transport = found
        first_transition = min((t["at"] for t in pod.pending), default=None)
        body = pod.report()
        transport.sendto(datagram.report_datagram(session_id, key, body))
        self._inflight[pod_key(pod)] = (pod.seq, time.monotonic(), first_transition)
        self.sent += 1

    def answered(self, pod: SimPod, data: bytes) -> None:
        found = self._keys.get(pod_key(pod))
        if found is None:
            return
        try:
            kind, fields = datagram.parse(data)
            if kind == datagram.RENEW:
                self._error("renew asked")
                return
            answer = datagram.open_answer(found[1], fields)
        except (datagram.DatagramError, ValueError):
            self._error("bad answer")
            return
        if answer.seq < 0:
            self.config_notices.append((answer.config_hash, time.monotonic()))
            if self.fetch_on_notice and answer.config_hash and answer.config_hash != pod.config_hash:
                task = asyncio.get_running_loop().create_task(self._fetch_config(pod))
                self._tasks.append(task)
            else:
                pod.config_hash = answer.config_hash or pod.config_hash
            return
        inflight = self._inflight.get(pod_key(pod))
        if inflight is None or inflight[0] != answer.seq:
            return
        del self._inflight[pod_key(pod)]
        self.post_latencies.append(time.monotonic() - inflight[1])
        if inflight[2] is not None:
            self.transition_latencies.append(time.time() - inflight[2])
        if answer.config_hash:
            pod.config_hash = answer.config_hash
        if answer.seq >= pod.carried_seq:
            pod.pending = []

    async def _fetch_config(self, pod: SimPod) -> None:
        """What a sidecar does when told its config changed: GET /v1/config, proven by its session."""
        assert self._http is not None
        params = {"hash": pod.config_hash, "namespace": pod.namespace, "pod": pod.name, "uid": pod.uid}
        session_id, key, _ = self._keys[pod_key(pod)]
        headers = {"Authorization": datagram.session_authorization(session_id, key)}
        try:
            async with self._http.get(self.url + "/v1/config", params=params, headers=headers) as r:
                body = await r.json()
                if r.status != 200:
                    self._error(f"config http {r.status}")
                    return
        except (aiohttp.ClientError, OSError, TimeoutError) as exc:
            self._error(f"config {type(exc).__name__}")
            return
        pod.config_hash = str(body.get("configHash") or pod.config_hash)
        self.fetched.setdefault(pod.config_hash, {})[pod_key(pod)] = time.monotonic()

    async def _loop(self, pod: SimPod, first_delay: float) -> None:
        wake = self._wake.setdefault(pod_key(pod), asyncio.Event())
        await asyncio.sleep(first_delay)
        while not self._stop:
            if await self.open_session(pod):
                break
            await asyncio.sleep(2)  # a retry delay
        while not self._stop:
            self.send(pod)
            # Unanswered transitions are sent again after about a second, as the real sidecar does.
            wait = random.uniform(0.5, 1.5) if pod.pending else self.interval
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(wake.wait(), wait)
            wake.clear()

    def start(self, pods: Sequence[SimPod] | None = None) -> None:
        if self._http is None:
            self._http = aiohttp.ClientSession(
                connector=aiohttp.TCPConnector(ssl=self._context(), limit=self.session_concurrency),
                timeout=aiohttp.ClientTimeout(total=60),
            )
            self._gate = asyncio.Semaphore(self.session_concurrency)
        for pod in pods if pods is not None else self.pods:
            delay = random.uniform(0, self.interval)  # spread like independently started sidecars
            self._tasks.append(asyncio.create_task(self._loop(pod, delay)))

    def kick(self, pod: SimPod) -> None:
        """Send the pod's report now (a transition), as a real sidecar does."""
        event = self._wake.get(pod_key(pod))
        if event is not None:
            event.set()

    def unanswered(self) -> int:
        return len(self._inflight)

    async def stop(self) -> None:
        self._stop = True
        for t in self._tasks:
            t.cancel()
        for t in self._tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await t
        self._tasks.clear()
        for _, _, transport in self._keys.values():
            transport.close()
        self._keys.clear()
        if self._http is not None:
            await self._http.close()
            self._http = None


def pod_key(pod: SimPod) -> str:
    return pod.namespace + "/" + pod.name


async def sim_pods_for(
    api: Api, namespace: str, *, policy_of: dict[str, str], concurrency: int = 32
) -> list[SimPod]:
    """SimPods (with pod-bound tokens) for the running injected pods of a namespace.

    `policy_of` maps the pod's `app` label to the `namespace/name` of the policy that selects it."""
    pods = running_injected(await api.pods(namespace))
    sims = [
        SimPod(
            namespace=namespace,
            name=p["metadata"]["name"],
            uid=p["metadata"]["uid"],
            ip=p["status"]["podIP"],
            policy=policy_of.get(p["metadata"]["labels"].get("app", ""), ""),
        )
        for p in pods
    ]
    tokens = await gather_limited((api.token(s.namespace, s.name, s.uid) for s in sims), concurrency)
    for s, t in zip(sims, tokens, strict=True):
        s.token = t
    return sims


async def wait_pods(
    api: Api, namespace: str, count: int, *, limit: float = 180, interval: float = 1.0
) -> float:
    """Wait until `count` injected pods run in the namespace; returns how long it took."""
    started = time.monotonic()
    while time.monotonic() - started < limit:
        got = len(running_injected(await api.pods(namespace)))
        if got >= count:
            return time.monotonic() - started
        await asyncio.sleep(interval)
    raise RuntimeError(f"only {got}/{count} injected pods running in {namespace} after {limit} s")


def _interrupt(signum: int, frame: Any) -> None:
    raise KeyboardInterrupt


@dataclass
class Bench:
    """The control plane, the operator and a scratch directory, closed together."""

    cp: BenchControlPlane
    operator: Operator
    workdir: Path

    @classmethod
    def start(
        cls, *, big: bool = False, operator_args: tuple[str, ...] = (), launcher: tuple[str, ...] = ()
    ) -> Bench:
        # SIGTERM unwinds like Ctrl-C, so every `finally` (sidecars, operator, control plane) runs.
        signal.signal(signal.SIGTERM, _interrupt)
        cp = start_control_plane(big=big)
        workdir = Path(tempfile.mkdtemp(prefix="breakwater-bench-"))
        op = Operator(cp.kubeconfig, workdir, extra_args=operator_args)
        if launcher:
            op.launcher = launcher
        try:
            op.start(cp.kubectl)
        except BaseException:
            op.stop()
            cp.stop()
            raise
        return cls(cp, op, workdir)

    def close(self) -> None:
        self.operator.stop()
        with contextlib.suppress(Exception):
            self.cp.kubectl(
                "delete", "mutatingwebhookconfiguration", self.operator.configuration, check=False
            )
        self.cp.stop()
        import shutil

        kept = Path(tempfile.gettempdir()) / "breakwater-bench-operator.log"
        with contextlib.suppress(OSError):
            shutil.copy(self.operator.log_path, kept)
            log(f"the operator's log is kept in {kept}")
        shutil.rmtree(self.workdir, ignore_errors=True)


def histogram_delta(
    before: dict[str, list[tuple[dict[str, str], float]]],
    after: dict[str, list[tuple[dict[str, str], float]]],
    name: str,
    **labels: str,
) -> list[tuple[float, float]]:
    """Cumulative (le, count) buckets of a histogram between two scrapes, summed over matching series."""

    def buckets(metrics: dict[str, list[tuple[dict[str, str], float]]]) -> dict[float, float]:
        out: dict[float, float] = {}
        for lab, value in metrics.get(name + "_bucket", ()):
            if all(lab.get(k) == v for k, v in labels.items()):
                le = float(lab["le"])
                out[le] = out.get(le, 0.0) + value
        return out

    b0, b1 = buckets(before), buckets(after)
    return sorted((le, b1[le] - b0.get(le, 0.0)) for le in b1)


def histogram_quantile(q: float, buckets: Sequence[tuple[float, float]]) -> float:
    """Prometheus' histogram_quantile: linear interpolation inside the bucket holding the rank."""
    if not buckets or buckets[-1][1] <= 0:
        return math.nan
    total = buckets[-1][1]
    rank = q * total
    prev_le, prev_count = 0.0, 0.0
    for le, count in buckets:
        if count >= rank:
            if math.isinf(le):
                return prev_le
            if count == prev_count:
                return le
            return prev_le + (le - prev_le) * (rank - prev_count) / (count - prev_count)
        prev_le, prev_count = le, count
    return buckets[-1][0]


async def create_policy(api: Api, namespace: str, body: dict[str, Any], *, limit: float = 60) -> None:
    """Create a policy and wait for Accepted=True, so pods created next are injected."""
    name = body["metadata"]["name"]
    await api.post(f"{GROUP_PATH}/namespaces/{namespace}/circuitbreakerpolicies", body)
    deadline = time.monotonic() + limit
    while time.monotonic() < deadline:
        got = await api.policy(namespace, name)
        for cond in (got.get("status") or {}).get("conditions") or ():
            if cond.get("type") == "Accepted" and cond.get("status") == "True":
                return
        await asyncio.sleep(0.1)
    raise RuntimeError(f"policy {namespace}/{name} not Accepted within {limit} s")
