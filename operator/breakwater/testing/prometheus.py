"""promtool and the Prometheus server, built from their Go module by hack/build-prometheus.sh, as the tests
and hack/dashboard_check.py run them: `find_binaries` locates (or builds) them, `PrometheusServer`
runs a server on loopback that scrapes given targets, and answers PromQL through its HTTP API."""

from __future__ import annotations

import json
import os
import subprocess
import time
import urllib.error
import urllib.parse
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from breakwater.errors import ControlPlaneError
from breakwater.testing import processes
from breakwater.testing.controlplane import free_port, repo_root

__all__ = ["PrometheusError", "PrometheusServer", "Target", "find_binaries"]


class PrometheusError(ControlPlaneError):
    """promtool or prometheus is missing, did not start, or refused a query."""


def find_binaries(*names: str, build: bool = False) -> Path:
    """The directory holding `names` (default promtool); with `build`, build what is missing first."""
    root = repo_root()
    if root is None:
        raise PrometheusError("no source checkout: hack/build-prometheus.sh builds promtool and prometheus")
    script = root / "hack" / "build-prometheus.sh"
    env = {**os.environ} if build else {**os.environ, "BREAKWATER_BUILD_DRY_RUN": "1"}
    out = subprocess.run(
        ["bash", str(script), *(names or ("promtool",))],
        stdout=subprocess.PIPE,
        stderr=None if build else subprocess.PIPE,
        text=True,
        env=env,
        check=False,
    )
    if out.returncode != 0 or not out.stdout.strip():
        detail = " ".join((out.stderr or "").strip().splitlines()[-2:])
        raise PrometheusError(
            f"{', '.join(names or ('promtool',))} unavailable ({script} exited {out.returncode}) {detail}"
        )
    return Path(out.stdout.strip().splitlines()[-1])


@dataclass(frozen=True)
class Target:
    """One scrape target: `host:port` and the labels the job gives it (as a PodMonitor would)."""

    job: str
    address: str
    labels: dict[str, str] = field(default_factory=dict)
    honor_labels: bool = False


@dataclass
class PrometheusServer:
    """A Prometheus server on 127.0.0.1 with its own data directory, scraping `targets`."""

    binary: Path
    workdir: Path
    targets: list[Target]
    scrape_interval: str = "1s"
    port: int = field(default_factory=free_port)
    process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def log_path(self) -> Path:
        return self.workdir / "prometheus.log"

    def config(self) -> dict[str, Any]:
        jobs: dict[tuple[str, bool], list[dict[str, Any]]] = {}
        for target in self.targets:
            jobs.setdefault((target.job, target.honor_labels), []).append(
                {"targets": [target.address], "labels": dict(target.labels)}
            )
        return {
            "global": {"scrape_interval": self.scrape_interval, "evaluation_interval": self.scrape_interval},
            "scrape_configs": [
                {"job_name": job, "honor_labels": honor, "static_configs": static}
                for (job, honor), static in jobs.items()
            ],
        }

    def start(self, timeout: float = 60) -> PrometheusServer:
        self.workdir.mkdir(parents=True, exist_ok=True)
        config = self.workdir / "prometheus.yml"
        config.write_text(yaml.safe_dump(self.config()))
        with self.log_path.open("ab") as log:
            self.process = subprocess.Popen(
                [
                    str(self.binary),
                    f"--config.file={config}",
                    f"--storage.tsdb.path={self.workdir / 'data'}",
                    f"--web.listen-address=127.0.0.1:{self.port}",
                    "--storage.tsdb.retention.time=1d",
                ],
                stdout=log,
                stderr=subprocess.STDOUT,
                cwd=self.workdir,
                preexec_fn=processes.die_with_parent,
            )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise PrometheusError(f"prometheus exited with {self.process.returncode}:\n{self.tail()}")
            try:
                with urllib.request.urlopen(f"{self.url}/-/ready", timeout=1) as resp:
                    if resp.status == 200:
                        return self
            except (OSError, urllib.error.URLError):
                pass
            time.sleep(0.2)
        raise PrometheusError(f"prometheus not ready within {timeout} s:\n{self.tail()}")

    def stop(self) -> None:
        if self.process is not None:
            processes.stop(self.process, timeout=20)
        self.process = None

    def tail(self, lines: int = 30) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""

    def api(self, path: str, **params: str) -> Any:
        """GET /api/v1/<path>: its `data`, or PrometheusError with Prometheus' own error message."""
        url = f"{self.url}/api/v1/{path}?{urllib.parse.urlencode(params)}"
        try:
            with urllib.request.urlopen(url, timeout=30) as resp:
                body = json.load(resp)
        except urllib.error.HTTPError as exc:
            body = json.loads(exc.read() or b"{}")
            raise PrometheusError(
                f"{body.get('errorType', exc.code)}: {body.get('error', exc.reason)}"
            ) from exc
        if body.get("status") != "success":
            raise PrometheusError(f"{body.get('errorType')}: {body.get('error')}")
        return body["data"]

    def query_range(self, expr: str, start: float, end: float, step: float) -> list[dict[str, Any]]:
        data = self.api("query_range", query=expr, start=f"{start:.3f}", end=f"{end:.3f}", step=f"{step:g}")
        result: list[dict[str, Any]] = data["result"]
        return result

    def active_targets(self) -> list[dict[str, Any]]:
        targets: list[dict[str, Any]] = self.api("targets")["activeTargets"]
        return targets
