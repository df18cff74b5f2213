"""`breakwater operator` in a child process, as the cluster suites, the benchmarks and the demo run it.

Like kopf's `KopfRunner`, but a real process: its own free ports (webhook, probes, reports), its own
MutatingWebhookConfiguration (a unique name, so several can share a control plane) and with it its own
leader Lease, its certificates kept in `workdir` across restarts (sidecars trusting the CA keep
reporting), the same identity across restarts (a restarted operator takes its Lease back at once, as a
container restarted in its pod does), and its log in `workdir/operator.log`.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

from breakwater.testing import processes
from breakwater.testing.controlplane import free_port

__all__ = ["OPERATOR_NAMESPACE", "OperatorProcess"]

OPERATOR_NAMESPACE = "breakwater-system"


@dataclass
class OperatorProcess:
    READY_PATH = (
        "/readyz"  # where the probes port says ready (class attributes: a subclass runs an older CLI)
    )
    HEALTH_FLAG = "--health-listen"
    kubeconfig: Path
    kubectl: str  # the kubectl binary: readiness waits for the webhook configuration to exist
    workdir: Path
    extra_args: tuple[str, ...] = ()
    env: dict[str, str] = field(default_factory=dict)  # e.g. PYTHONPATH of another checkout to compare
    launcher: tuple[str, ...] = ("-m", "breakwater.cli")  # or a script that wraps the CLI (bench/)
    sidecar_image: str = "registry.example/breakwater:test"
    webhook_port: int = field(default_factory=free_port)
    health_port: int = field(default_factory=free_port)
    report_port: int = field(default_factory=free_port)
    metrics_port: int | None = None  # /metrics on 127.0.0.1 when set (off, as the operator's default)
    configuration: str = field(default_factory=lambda: f"breakwater-test-{uuid.uuid4().hex[:8]}")
    # A second replica of the same operator: the first's `configuration` and `cert_dir`, its own identity.
    identity: str = ""  # POD_NAME, the name it holds the Lease by; default: `configuration`
    cert_dir: Path | None = None  # default: workdir/certs
    process: subprocess.Popen[bytes] | None = None

    def replica(
        self, workdir: Path, name: str, *, extra_args: tuple[str, ...] | None = None
    ) -> OperatorProcess:
        """Another replica of this operator (not started): its Lease, webhook configuration and
        certificates, its own workdir, ports (a metrics port too if this one has one) and identity
        (`<configuration>-<name>`)."""
        return OperatorProcess(
            kubeconfig=self.kubeconfig,
            kubectl=self.kubectl,
            workdir=workdir,
            extra_args=self.extra_args if extra_args is None else extra_args,
            env=self.env,
            launcher=self.launcher,
            sidecar_image=self.sidecar_image,
            configuration=self.configuration,
            cert_dir=self.certs,
            identity=f"{self.configuration}-{name}",
            metrics_port=None if self.metrics_port is None else free_port(),
        )

    @property
    def log_path(self) -> Path:
        return self.workdir / "operator.log"

    @property
    def certs(self) -> Path:
        return self.cert_dir or self.workdir / "certs"

    @property
    def report_url(self) -> str:
        return f"https://127.0.0.1:{self.report_port}"

    @property
    def pid(self) -> int:
        assert self.process is not None, "the operator is not running"
        return self.process.pid

    @property
    def args(self) -> list[str]:
        return [
            sys.executable, *self.launcher, "operator",
            f"--kubeconfig={self.kubeconfig}",
            f"--webhook-listen=127.0.0.1:{self.webhook_port}",
            f"--webhook-url=https://127.0.0.1:{self.webhook_port}",
            f"--webhook-configuration={self.configuration}",
            f"{self.HEALTH_FLAG}=127.0.0.1:{self.health_port}",
            f"--report-listen=127.0.0.1:{self.report_port}",
            f"--report-url={self.report_url}",
            f"--operator-namespace={OPERATOR_NAMESPACE}",
            f"--sidecar-image={self.sidecar_image}",
            f"--webhook-cert-dir={self.certs}",
            *([] if self.metrics_port is None else [f"--metrics-listen=127.0.0.1:{self.metrics_port}"]),
            *self.extra_args,
        ]  # fmt: skip

    def start(self, *, wait: bool = True) -> None:
        self.workdir.mkdir(parents=True, exist_ok=True)
        self._ensure_namespace()
        with self.log_path.open("ab") as log:
            self.process = subprocess.Popen(
                self.args,
                stdout=log,
                stderr=subprocess.STDOUT,
                env={
                    **os.environ,
                    "PYTHONUNBUFFERED": "1",
                    "POD_NAME": self.identity or self.configuration,
                    **self.env,
                },
                preexec_fn=processes.die_with_parent,  # never outlives the test or benchmark
            )
        if wait:
            self.wait_ready()

    def _ensure_namespace(self) -> None:
        """The operator's namespace holds its Lease; the chart creates it in a cluster, this here."""
        created = subprocess.run(
            [self.kubectl, f"--kubeconfig={self.kubeconfig}", "create", "namespace", OPERATOR_NAMESPACE],
            capture_output=True, text=True, check=False, timeout=60,
        )  # fmt: skip
        if created.returncode != 0 and "AlreadyExists" not in created.stderr:
            raise AssertionError(f"cannot create namespace {OPERATOR_NAMESPACE}: {created.stderr}")

    def _check_alive(self) -> None:
        if self.process is not None and self.process.poll() is not None:
            raise AssertionError(f"operator exited with {self.process.returncode}:\n{self.tail()}")

    def wait_ready(self, timeout: float = 60) -> None:
        """Until it is ready (webhook and report endpoints serve, caches listed) and its webhook
        configuration exists (the leader writes it)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            self._check_alive()
            with contextlib.suppress(OSError):
                with urllib.request.urlopen(
                    f"http://127.0.0.1:{self.health_port}{self.READY_PATH}", timeout=1
                ):
                    pass
                found = subprocess.run(
                    [self.kubectl, f"--kubeconfig={self.kubeconfig}", "get", "mutatingwebhookconfiguration",
                     self.configuration, "-o", "name"],
                    capture_output=True, check=False, timeout=30,
                )  # fmt: skip
                if found.returncode == 0:
                    return
            time.sleep(0.2)
        raise AssertionError(f"operator not ready within {timeout} s:\n{self.tail()}")

    def wait_webhook_listening(self, timeout: float = 60) -> None:
        """Return as soon as the webhook port accepts connections (the operator may still be syncing)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            self._check_alive()
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
        if self.process is not None:
            processes.stop(self.process, sig=sig, timeout=20)
        self.process = None

    def tail(self, lines: int = 60) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""

    def ca_pem(self) -> str:
        return (self.certs / "ca.crt").read_text()

    def count_log(self, needle: str) -> int:
        try:
            return self.log_path.read_text(errors="replace").count(needle)
        except OSError:
            return 0

    def cleanup(self) -> None:
        """Stop it and remove its webhook configuration."""
        self.stop()
        subprocess.run(
            [self.kubectl, f"--kubeconfig={self.kubeconfig}", "delete", "mutatingwebhookconfiguration",
             self.configuration, "--ignore-not-found"],
            capture_output=True, check=False, timeout=60,
        )  # fmt: skip
