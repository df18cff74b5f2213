"""promtool and the Prometheus server, built from their Go module by hack/build-prometheus.sh, as the tests
run them: `find_binaries` locates (or builds) them, `PrometheusServer` runs a server on loopback that
scrapes given targets and evaluates rule files, and answers PromQL through its HTTP API;
`dashboard_queries` reads the queries of a Grafana dashboard."""

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

__all__ = [
    "PanelQuery",
    "PrometheusError",
    "PrometheusServer",
    "Target",
    "dashboard_queries",
    "find_binaries",
]


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
class PanelQuery:
    """One query of a Grafana panel, with its Grafana variables replaced as Grafana would send them."""

    panel: str
    ref: str
    expr: str  # as written in the dashboard
    legend: str

    def promql(self, *, namespace: str = ".*", rate_interval: str = "1m") -> str:
        """The PromQL Grafana sends: `$namespace` all (or one), `$__rate_interval` a fixed window."""
        return (
            self.expr.replace("$__rate_interval", rate_interval)
            .replace("${namespace}", namespace)
            .replace("$namespace", namespace)
        )


def dashboard_queries(dashboard: dict[str, Any]) -> list[PanelQuery]:
    """Every query of every panel (rows' nested panels too) of a Grafana dashboard model."""

    def panels(items: list[dict[str, Any]]) -> Any:
        for panel in items:
            yield panel
            yield from panels(panel.get("panels") or [])

    return [
        PanelQuery(
            str(panel.get("title")), str(t.get("refId")), str(t["expr"]), str(t.get("legendFormat", ""))
        )
        for panel in panels(dashboard.get("panels") or [])
        for t in panel.get("targets") or ()
        if t.get("expr")
    ]


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
    rule_files: list[Path] = field(default_factory=list)  # evaluated every scrape_interval
    jobs: dict[str, bool] = field(default_factory=dict)  # jobs (-> honor_labels) without targets yet
    port: int = field(default_factory=free_port)
    process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def log_path(self) -> Path:
        return self.workdir / "prometheus.log"

    def _targets_file(self, job: str) -> Path:
        return self.workdir / f"targets-{job}.json"

    def config(self) -> dict[str, Any]:
        """Each job reads its targets from a file (file_sd: `add_targets` changes them while it runs)."""
        jobs = {**self.jobs, **{target.job: target.honor_labels for target in self.targets}}
        return {
            "global": {
                "scrape_interval": self.scrape_interval,
                "scrape_timeout": self.scrape_interval,  # at most the interval, which Prometheus checks
                "evaluation_interval": self.scrape_interval,
            },
            "rule_files": [str(path) for path in self.rule_files],
            "scrape_configs": [
                {
                    "job_name": job,
                    "honor_labels": honor,
                    "file_sd_configs": [{"files": [str(self._targets_file(job))], "refresh_interval": "1s"}],
                }
                for job, honor in jobs.items()
            ],
        }

    def _write_targets(self) -> None:
        by_job: dict[str, list[dict[str, Any]]] = {job: [] for job in self.jobs}
        for target in self.targets:
            by_job.setdefault(target.job, []).append({"targets": [target.address], "labels": target.labels})
        for job, groups in by_job.items():
            staging = self._targets_file(job).with_suffix(".tmp")
            staging.write_text(json.dumps(groups))
            staging.replace(self._targets_file(job))  # whole, as file_sd wants it

    def add_targets(self, *targets: Target) -> None:
        """Scrape these too, from the next refresh on (their job must be one the server started with)."""
        known = {*self.jobs, *(t.job for t in self.targets)}
        assert all(t.job in known for t in targets), "a new job needs a restart"
        self.targets.extend(targets)
        self._write_targets()

    def start(self, timeout: float = 60) -> PrometheusServer:
        self.workdir.mkdir(parents=True, exist_ok=True)
        config = self.workdir / "prometheus.yml"
        config.write_text(yaml.safe_dump(self.config()))
        self._write_targets()
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

    def query(self, expr: str) -> list[dict[str, Any]]:
        result: list[dict[str, Any]] = self.api("query", query=expr)["result"]
        return result

    def alerts(self) -> list[dict[str, Any]]:
        """The alerts pending or firing now, from the rule files."""
        alerts: list[dict[str, Any]] = self.api("alerts")["alerts"]
        return alerts

    def active_targets(self) -> list[dict[str, Any]]:
        targets: list[dict[str, Any]] = self.api("targets")["activeTargets"]
        return targets
