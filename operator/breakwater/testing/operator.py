"""`breakwater operator` in a child process, as the cluster suites, the benchmarks and the demo run it.

Like kopf's `KopfRunner`, but a real process: its own free ports (webhook, liveness, reports), its own
MutatingWebhookConfiguration (a unique name, so several can share a control plane), its certificates
kept in `workdir` across restarts (sidecars trusting the CA keep reporting), and its log in
`workdir/operator.log`.
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

__all__ = ["OperatorProcess"]


@dataclass
class OperatorProcess:
    kubeconfig: Path
    kubectl: str  # the kubectl binary: readiness waits for the webhook configuration to exist
    workdir: Path
    extra_args: tuple[str, ...] = ()
    env: dict[str, str] = field(default_factory=dict)  # e.g. PYTHONPATH of another checkout to compare
    launcher: tuple[str, ...] = ("-m", "breakwater.cli")  # or a script that wraps the CLI (bench/)
    sidecar_image: str = "registry.example/breakwater:test"
    webhook_port: int = field(default_factory=free_port)
    liveness_port: int = field(default_factory=free_port)
    report_port: int = field(default_factory=free_port)
    configuration: str = field(default_factory=lambda: f"breakwater-test-{uuid.uuid4().hex[:8]}")
    process: subprocess.Popen[bytes] | None = None

    @property
    def log_path(self) -> Path:
        return self.workdir / "operator.log"

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
            f"--liveness=127.0.0.1:{self.liveness_port}",
            f"--report-listen=127.0.0.1:{self.report_port}",
            f"--report-url={self.report_url}",
            "--operator-namespace=breakwater-system",
            f"--sidecar-image={self.sidecar_image}",
            f"--webhook-cert-dir={self.workdir / 'certs'}",
            *self.extra_args,
        ]  # fmt: skip

    def start(self, *, wait: bool = True) -> None:
        self.workdir.mkdir(parents=True, exist_ok=True)
        with self.log_path.open("ab") as log:
            self.process = subprocess.Popen(
                self.args,
                stdout=log,
                stderr=subprocess.STDOUT,
                env={**os.environ, "PYTHONUNBUFFERED": "1", **self.env},
                preexec_fn=processes.die_with_parent,  # never outlives the test or benchmark
            )
        if wait:
            self.wait_ready()

    def _check_alive(self) -> None:
        if self.process is not None and self.process.poll() is not None:
            raise AssertionError(f"operator exited with {self.process.returncode}:\n{self.tail()}")

    def wait_ready(self, timeout: float = 60) -> None:
        """Until its liveness endpoint answers and its webhook configuration exists."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            self._check_alive()
            with contextlib.suppress(OSError):
                with urllib.request.urlopen(f"http://127.0.0.1:{self.liveness_port}/healthz", timeout=1):
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
        return (self.workdir / "certs" / "ca.crt").read_text()

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
