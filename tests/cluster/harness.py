"""Running the real operator (`breakwater operator`) against the test control plane, as a process."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import textwrap
import time
import urllib.request
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from breakwater.testing.controlplane import free_port
from tests.conftest import Cluster


def install_crd(cluster: Cluster) -> None:
    """Apply the CRD exactly as the models generate it (a drift test keeps crds/ equal to this)."""
    from breakwater.api.crdgen import crd_yaml

    cluster.kubectl("apply", "--server-side", "--force-conflicts", "-f", "-", input=crd_yaml())
    cluster.wait_established("circuitbreakerpolicies.breakwater.dev")


@dataclass
class OperatorProcess:
    """`breakwater operator` in a child process, with its own webhook configuration and ports."""

    cluster: Cluster
    log_path: Path
    extra_args: tuple[str, ...] = ()
    webhook_port: int = field(default_factory=free_port)
    liveness_port: int = field(default_factory=free_port)
    report_port: int = field(default_factory=free_port)
    configuration: str = field(default_factory=lambda: f"breakwater-test-{uuid.uuid4().hex[:8]}")
    process: subprocess.Popen[bytes] | None = None

    @property
    def args(self) -> list[str]:
        return [
            sys.executable, "-m", "breakwater.cli", "operator",
            f"--kubeconfig={self.cluster.kubeconfig}",
            f"--webhook-listen=127.0.0.1:{self.webhook_port}",
            f"--webhook-url=https://127.0.0.1:{self.webhook_port}",
            f"--webhook-configuration={self.configuration}",
            f"--liveness=127.0.0.1:{self.liveness_port}",
            f"--report-listen=127.0.0.1:{self.report_port}",
            f"--report-url=https://127.0.0.1:{self.report_port}",
            "--operator-namespace=breakwater-system",
            "--sidecar-image=registry.example/breakwater:test",
            f"--webhook-cert-dir={self.log_path.parent / 'certs'}",
            *self.extra_args,
        ]  # fmt: skip

    def start(self, *, wait: bool = True) -> None:
        log = self.log_path.open("ab")
        self.process = subprocess.Popen(
            self.args, stdout=log, stderr=subprocess.STDOUT, env={**os.environ, "PYTHONUNBUFFERED": "1"}
        )
        if wait:
            self.wait_ready()

    def wait_ready(self, timeout: float = 60) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process is not None and self.process.poll() is not None:
                raise AssertionError(f"operator exited with {self.process.returncode}:\n{self.tail()}")
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{self.liveness_port}/healthz", timeout=1):
                    pass
                got = self.cluster.kubectl(
                    "get", "mutatingwebhookconfiguration", self.configuration, "-o", "name", check=False
                )
                if got.returncode == 0:
                    return
            except OSError:
                pass
            time.sleep(0.2)
        raise AssertionError(f"operator not ready within {timeout} s:\n{self.tail()}")

    def wait_webhook_listening(self, timeout: float = 60) -> None:
        """Return as soon as the webhook port accepts connections (the operator may still be syncing)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process is not None and self.process.poll() is not None:
                raise AssertionError(f"operator exited with {self.process.returncode}:\n{self.tail()}")
            try:
                socket.create_connection(("127.0.0.1", self.webhook_port), timeout=0.5).close()
                return
            except OSError:
                time.sleep(0.02)
        raise AssertionError(f"webhook not listening within {timeout} s:\n{self.tail()}")

    @contextlib.contextmanager
    def frozen(self) -> Iterator[None]:
        """The operator stopped in its tracks (SIGSTOP) inside the block: its caches keep what they hold
        while the API changes, as when a watch event is late."""
        assert self.process is not None
        self.process.send_signal(signal.SIGSTOP)
        try:
            yield
        finally:
            self.process.send_signal(signal.SIGCONT)

    def stop(self, sig: int = signal.SIGTERM) -> None:
        if self.process is None:
            return
        if self.process.poll() is None:
            self.process.send_signal(sig)
            try:
                self.process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self.process = None

    def tail(self, lines: int = 60) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""

    def cleanup(self) -> None:
        self.stop()
        self.cluster.kubectl("delete", "mutatingwebhookconfiguration", self.configuration, check=False)


def opt_in(cluster: Cluster, namespace: str, *, restricted: bool = False) -> None:
    labels = ["breakwater.dev/injection=enabled"]
    if restricted:
        labels.append("pod-security.kubernetes.io/enforce=restricted")
    cluster.kubectl("label", "namespace", namespace, "--overwrite", *labels)


def policy_manifest(name: str, *, app: str = "checkout", upstreams: str = "", **spec: Any) -> str:
    upstreams = upstreams or textwrap.dedent(
        """
        - name: payments
          host: payments.shop.svc.cluster.local
          port: 8080
          listenPort: 15001
        """
    )
    body = {
        "apiVersion": "breakwater.dev/v1alpha1",
        "kind": "CircuitBreakerPolicy",
        "metadata": {"name": name},
        "spec": {"selector": {"matchLabels": {"app": app}}, **spec},
    }
    text = json.dumps(body)
    import yaml

    doc = yaml.safe_load(text)
    doc["spec"]["upstreams"] = yaml.safe_load(upstreams)
    return str(yaml.safe_dump(doc))


RESTRICTED_CONTAINER = {
    "securityContext": {
        "runAsNonRoot": True,
        "runAsUser": 1000,
        "allowPrivilegeEscalation": False,
        "capabilities": {"drop": ["ALL"]},
        "seccompProfile": {"type": "RuntimeDefault"},
    }
}


def deployment_manifest(
    name: str,
    *,
    node: str,
    app: str = "checkout",
    replicas: int = 2,
    annotations: dict[str, str] | None = None,
) -> str:
    import yaml

    body = {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": name},
        "spec": {
            "replicas": replicas,
            "selector": {"matchLabels": {"app": app, "deployment": name}},
            "template": {
                "metadata": {"labels": {"app": app, "deployment": name}, "annotations": annotations or {}},
                "spec": {
                    "nodeName": node,
                    "containers": [
                        {"name": "app", "image": "registry.example/app:1", **RESTRICTED_CONTAINER}
                    ],
                },
            },
        },
    }
    return str(yaml.safe_dump(body))


def pods(cluster: Cluster, namespace: str, selector: str) -> list[dict[str, Any]]:
    out = cluster.kubectl("get", "pods", "-n", namespace, "-l", selector, "-o", "json").stdout
    items: list[dict[str, Any]] = json.loads(out)["items"]
    return items


def policy(cluster: Cluster, namespace: str, name: str) -> dict[str, Any]:
    out = cluster.kubectl("get", "cbp", name, "-n", namespace, "-o", "json").stdout
    body: dict[str, Any] = json.loads(out)
    return body


def condition(body: dict[str, Any], kind: str) -> dict[str, Any]:
    for cond in (body.get("status") or {}).get("conditions") or ():
        if cond.get("type") == kind:
            return dict(cond)
    return {}


def wait_accepted(cluster: Cluster, namespace: str, name: str, *, timeout: float = 30) -> None:
    """Wait until the operator has rendered the policy (`Accepted=True`)."""
    cluster.wait_for(
        f"policy {namespace}/{name} Accepted",
        lambda: condition(policy(cluster, namespace, name), "Accepted").get("status") == "True",
        timeout=timeout,
    )
