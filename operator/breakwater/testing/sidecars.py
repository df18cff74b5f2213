"""Sidecar processes for kwok pods: the part of a kubelet that Breakwater needs, on loopback.

kwok marks pods Running and gives them IPs in its pod CIDR (a /24 inside 127.64.0.0/10) but runs no
container. For each injected pod this starts the real sidecar (`breakwater proxy --policies-dir`)
bound to the pod's own IP, with what the kubelet would mount: the namespace's ConfigMap as files, the
downward-API labels file and a pod-bound service-account token (TokenRequest, audience breakwater).
The ConfigMap files are
refreshed every `mount_refresh` seconds, like the kubelet's sync period (about a minute in real
clusters), so the operator's live channel is what makes edits arrive within a second.

The sidecar is a native sidecar (an init container with `restartPolicy: Always`). kwok 0.8 reports
such a container running and ready with the pod, but models neither the start order nor the startup
probe nor the shutdown order: those are tested on the real node (tests/node/), not here.
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
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from breakwater.api.constants import CONFIGMAP_NAME, TOKEN_AUDIENCE
from breakwater.injection.pod import sidecar_of, sidecar_ports
from breakwater.testing import processes

logger = logging.getLogger(__name__)


def _kubectl(kubectl: str, kubeconfig: Path, *args: str) -> str:
    proc = subprocess.run(
        [kubectl, f"--kubeconfig={kubeconfig}", *args],
        capture_output=True,
        text=True,
        check=False,
        timeout=30,
    )
    if proc.returncode != 0:
        raise RuntimeError(f"kubectl {' '.join(args)}: {proc.stderr.strip()}")
    return proc.stdout


def labels_file_text(labels: dict[str, str]) -> str:
    """The downward API's labels format: `key="value"` lines, sorted."""
    return "".join(f"{k}={json.dumps(v)}\n" for k, v in sorted(labels.items()))


@dataclass
class SidecarProcess:
    namespace: str
    pod: str
    uid: str
    ip: str
    directory: Path
    process: subprocess.Popen[bytes]
    admin_port: int  # the pod's, as it was injected (older pods bind the legacy port)

    @property
    def admin_url(self) -> str:
        return f"http://{self.ip}:{self.admin_port}"

    def url(self, port: int) -> str:
        return f"http://{self.ip}:{port}"


@dataclass
class SidecarFleet:
    """Starts and stops one sidecar per injected, running pod of a namespace."""

    kubectl: str
    kubeconfig: Path
    namespace: str
    report_interval: float = 2.0
    mount_refresh: float = 60.0
    python: str = sys.executable
    workdir: Path = field(default_factory=lambda: Path(tempfile.mkdtemp(prefix="breakwater-fleet-")))
    sidecars: dict[str, SidecarProcess] = field(default_factory=dict)
    _stop: threading.Event = field(default_factory=threading.Event)
    _refresher: threading.Thread | None = None

    def pods(self) -> list[dict[str, Any]]:
        out = _kubectl(self.kubectl, self.kubeconfig, "get", "pods", "-n", self.namespace, "-o", "json")
        return [
            p
            for p in json.loads(out)["items"]
            if p["status"].get("phase") == "Running"
            and p["status"].get("podIP")
            and sidecar_of(p) is not None
            and not p["metadata"].get("deletionTimestamp")
        ]

    def sync(self) -> list[SidecarProcess]:
        """Start sidecars for new injected pods, stop those whose pod is gone; returns the new ones."""
        pods = {p["metadata"]["name"]: p for p in self.pods()}
        for name in [n for n in self.sidecars if n not in pods]:
            self._stop_one(self.sidecars.pop(name))
        started = []
        for name, pod in pods.items():
            if name not in self.sidecars:
                self.sidecars[name] = self._start_one(pod)
                started.append(self.sidecars[name])
        if self._refresher is None:
            self._refresher = threading.Thread(target=self._refresh_loop, daemon=True)
            self._refresher.start()
        return started

    def _configmap_files(self) -> dict[str, str]:
        try:
            out = _kubectl(
                self.kubectl,
                self.kubeconfig,
                "get",
                "configmap",
                CONFIGMAP_NAME,
                "-n",
                self.namespace,
                "-o",
                "json",
            )
        except RuntimeError:
            return {}
        data: dict[str, str] = json.loads(out).get("data") or {}
        return data

    def _write_mount(self, directory: Path) -> None:
        """Replace the mounted files atomically, as the kubelet's `..data` symlink swap does."""
        staging = directory.with_name(directory.name + ".new")
        shutil.rmtree(staging, ignore_errors=True)
        staging.mkdir(parents=True)
        for key, value in self._configmap_files().items():
            (staging / key).write_text(value)
        old = directory.with_name(directory.name + ".old")
        shutil.rmtree(old, ignore_errors=True)
        if directory.exists():
            directory.rename(old)
        staging.rename(directory)
        shutil.rmtree(old, ignore_errors=True)

    def _start_one(self, pod: dict[str, Any]) -> SidecarProcess:
        meta = pod["metadata"]
        name, uid, ip = meta["name"], meta["uid"], pod["status"]["podIP"]
        directory = self.workdir / name
        (directory / "pod").mkdir(parents=True, exist_ok=True)
        self._write_mount(directory / "policies")
        (directory / "pod" / "labels").write_text(labels_file_text(meta.get("labels") or {}))
        account = pod["spec"].get("serviceAccountName") or "default"
        token = _kubectl(
            self.kubectl, self.kubeconfig, "create", "token", account, "-n", self.namespace,
            f"--audience={TOKEN_AUDIENCE}", "--bound-object-kind=Pod", f"--bound-object-name={name}",
            f"--bound-object-uid={uid}", "--duration=1h",
        ).strip()  # fmt: skip
        (directory / "token").write_text(token)
        sidecar = sidecar_of(pod) or {}
        env = {e["name"]: e["value"] for e in sidecar.get("env", []) if "value" in e}
        admin_port, proxy_port = sidecar_ports(pod)  # the kubelet runs the container's own args
        log = (directory / "sidecar.log").open("ab")
        process = subprocess.Popen(
            [
                self.python,
                "-m",
                "breakwater.cli",
                "proxy",
                "--policies-dir",
                str(directory / "policies"),
                "--pod-labels",
                str(directory / "pod" / "labels"),
                "--listen-address",
                ip,
                "--admin-address",
                ip,
                "--admin-port",
                str(admin_port),
                "--proxy-port",
                str(proxy_port),
                "--report-interval",
                str(self.report_interval),
                "--token-file",
                str(directory / "token"),
                "--log-format",
                "json",
            ],
            stdout=log,
            stderr=subprocess.STDOUT,
            env={
                **os.environ,
                **env,
                "POD_NAME": name,
                "POD_NAMESPACE": self.namespace,
                "POD_UID": uid,
                "PYTHONUNBUFFERED": "1",
            },
        )
        logger.info("started the sidecar of pod %s/%s on %s", self.namespace, name, ip)
        return SidecarProcess(self.namespace, name, uid, ip, directory, process, admin_port)

    def restart(self, name: str, sig: int = signal.SIGTERM) -> SidecarProcess:
        """The sidecar container of pod `name` restarting in its pod (as the kubelet restarts a crashed
        container): the same pod and uid, a new process whose counters start from zero."""
        self._stop_one(self.sidecars[name], sig)
        pod = next(p for p in self.pods() if p["metadata"]["name"] == name)
        self.sidecars[name] = self._start_one(pod)
        return self.sidecars[name]

    def _refresh_loop(self) -> None:
        while not self._stop.wait(self.mount_refresh):
            for sidecar in list(self.sidecars.values()):
                with contextlib.suppress(OSError, RuntimeError):
                    self._write_mount(sidecar.directory / "policies")

    def wait_ready(self, timeout: float = 30) -> None:
        import urllib.request

        deadline = time.monotonic() + timeout
        pending = dict(self.sidecars)
        while pending and time.monotonic() < deadline:
            for name, sidecar in list(pending.items()):
                if sidecar.process.poll() is not None:
                    log_text = (sidecar.directory / "sidecar.log").read_text(errors="replace")[-2000:]
                    raise RuntimeError(f"sidecar of {name} exited:\n{log_text}")
                with (
                    contextlib.suppress(OSError),
                    urllib.request.urlopen(f"{sidecar.admin_url}/readyz", timeout=1) as resp,
                ):
                    if resp.status == 200:
                        del pending[name]
            time.sleep(0.1)
        if pending:
            raise RuntimeError(f"sidecars not ready within {timeout} s: {', '.join(pending)}")

    def _stop_one(self, sidecar: SidecarProcess, sig: int = signal.SIGTERM) -> None:
        processes.stop(sidecar.process, sig=sig)

    def stop(self) -> None:
        self._stop.set()
        processes.stop_all(s.process for s in self.sidecars.values())
        self.sidecars.clear()
        shutil.rmtree(self.workdir, ignore_errors=True)
