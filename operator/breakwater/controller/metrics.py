"""The operator's own Prometheus metrics, served at /metrics on their own port (`--metrics-listen`).

One `OperatorMetrics` per process (`METRICS`), with its own `CollectorRegistry` so that tests can make
fresh ones. The code that does the work calls one method per event; what the operator already counts
or knows (report datagrams, the status of each policy) is read at scrape time instead, so nothing is
added to the report path. Every name is listed in docs/observability.md:

- ``breakwater_operator_reconciles_total{result}``: accepted, invalid, skipped, deleted, error
- ``breakwater_operator_admissions_total{outcome}``: injected, skipped, not-selected, error; and
  ``breakwater_operator_admission_duration_seconds``, the time to answer a pod admission
- ``breakwater_operator_reports_received_total``, ``breakwater_operator_reports_rejected_total{reason}``,
  ``breakwater_operator_reports_relayed_total`` (a non-leader's, relayed on to the leader)
- ``breakwater_operator_sessions_granted_total``, ``breakwater_operator_config_pushes_total``
- ``breakwater_operator_status_writes_total{result}`` and ``..._status_write_duration_seconds``
- ``breakwater_operator_leader``: 1 while this replica is the one that writes
- from the status each policy last got (leader only): ``breakwater_operator_pods_selected``,
  ``..._pods_not_injected``, ``..._pods_not_reporting`` ``{namespace, policy}`` and
  ``breakwater_operator_upstream_pods{namespace, policy, upstream, state}``
- prometheus_client's ``process_*`` and ``python_*`` metrics
"""

from __future__ import annotations

import logging
import time
from collections.abc import Awaitable, Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any, Final, Literal, Protocol
from wsgiref.simple_server import WSGIServer

from prometheus_client import (
    GC_COLLECTOR,
    PLATFORM_COLLECTOR,
    PROCESS_COLLECTOR,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
    start_http_server,
)
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.metrics_core import Metric
from prometheus_client.registry import Collector

__all__ = [
    "ADMISSION_OUTCOMES",
    "METRICS",
    "RECONCILE_RESULTS",
    "REPORT_REJECT_REASONS",
    "OperatorMetrics",
    "serve",
]

logger = logging.getLogger(__name__)

PREFIX: Final = "breakwater_operator_"
RECONCILE_RESULTS: Final = ("accepted", "invalid", "skipped", "deleted", "error")
ADMISSION_OUTCOMES: Final = ("injected", "skipped", "not-selected", "error")
# The reasons ReportServer.rejected counts a dropped datagram under (controller/reports.py).
REPORT_REJECT_REASONS: Final = (
    "malformed",
    "expired",
    "bad-signature",
    "invalid",
    "claims-other-pod",
    "replayed",
)
STATUS_WRITE_RESULTS: Final = ("ok", "error")
UPSTREAM_POD_STATES: Final = {
    "open": "open",
    "halfOpen": "half_open",
    "closed": "closed",
    "wouldOpen": "would_open",
}
# The webhook's timeout is 1-30 s (5 by default); a status PATCH waits up to the client's 30 s.
ADMISSION_BUCKETS: Final = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
STATUS_WRITE_BUCKETS: Final = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)

ReconcileResult = Literal["accepted", "invalid", "skipped", "deleted", "error"]
AdmissionOutcome = Literal["injected", "skipped", "not-selected", "error"]
StatusWriter = Callable[[str, str, dict[str, Any]], Awaitable[dict[str, Any]]]  # ns, name, patch -> stored


class ReportCounts(Protocol):
    """What the report server counts (controller/reports.ReportServer)."""

    @property
    def accepted(self) -> int: ...
    @property
    def rejected(self) -> Mapping[str, int]: ...
    @property
    def relayed(self) -> int: ...


class PolicyStatus(Protocol):
    @property
    def status(self) -> Mapping[str, Any]: ...


class PolicyRecords(Protocol):
    """The status loop's records (controller/refresher.Refresher): the status each policy last got."""

    @property
    def records(self) -> Mapping[tuple[str, str], PolicyStatus]: ...


@dataclass
class _Sources:
    reports: ReportCounts | None = None
    policies: PolicyRecords | None = None


class _Known(Collector):
    """What the operator already holds, turned into metrics when Prometheus asks."""

    def __init__(self, sources: _Sources, leader: Callable[[], bool]) -> None:
        self._sources = sources
        self._leader = leader

    def collect(self) -> Iterable[Metric]:
        yield from self._reports()
        yield from self._policies()

    def _reports(self) -> Iterable[Metric]:
        reports = self._sources.reports
        accepted = reports.accepted if reports is not None else 0
        rejected = dict(reports.rejected) if reports is not None else {}
        received = CounterMetricFamily(
            f"{PREFIX}reports_received",
            "Report datagrams received from sidecars: accepted and rejected.",
        )
        received.add_metric([], accepted + sum(rejected.values()))
        relayed = CounterMetricFamily(
            f"{PREFIX}reports_relayed",
            "Accepted reports this replica, not the leader, relayed to the leader (which receives them too).",
        )
        relayed.add_metric([], reports.relayed if reports is not None else 0)
        dropped = CounterMetricFamily(
            f"{PREFIX}reports_rejected", "Report datagrams dropped, by reason.", labels=["reason"]
        )
        for reason in sorted({*REPORT_REJECT_REASONS, *rejected}):
            dropped.add_metric([reason], rejected.get(reason, 0))
        yield received
        yield dropped
        yield relayed

    def _policies(self) -> Iterable[Metric]:
        ids = ["namespace", "policy"]
        selected = GaugeMetricFamily(
            f"{PREFIX}pods_selected", "Pods a policy selects (status.pods.selected).", labels=ids
        )
        not_injected = GaugeMetricFamily(
            f"{PREFIX}pods_not_injected",
            "Selected pods without the sidecar (status.pods: selected - injected).",
            labels=ids,
        )
        not_reporting = GaugeMetricFamily(
            f"{PREFIX}pods_not_reporting",
            "Injected pods whose sidecar does not report the current config (injected - reporting).",
            labels=ids,
        )
        upstream_pods = GaugeMetricFamily(
            f"{PREFIX}upstream_pods",
            "Reporting pods by the state of their breaker for an upstream (status.upstreams[]).",
            labels=[*ids, "upstream", "state"],
        )
        policies = self._sources.policies
        # Only the replica that writes the status has it current; the others export none of it.
        if policies is not None and self._leader():
            for (namespace, name), record in list(policies.records.items()):
                status = record.status
                pods = status.get("pods") or {}
                counts = {k: int(pods.get(k) or 0) for k in ("selected", "injected", "reporting")}
                selected.add_metric([namespace, name], counts["selected"])
                not_injected.add_metric([namespace, name], max(0, counts["selected"] - counts["injected"]))
                not_reporting.add_metric([namespace, name], max(0, counts["injected"] - counts["reporting"]))
                for upstream in status.get("upstreams") or ():
                    for field, state in UPSTREAM_POD_STATES.items():
                        value = int(upstream.get(field) or 0)
                        upstream_pods.add_metric([namespace, name, str(upstream.get("name")), state], value)
        yield from (selected, not_injected, not_reporting, upstream_pods)


class OperatorMetrics:
    """The operator's metrics and the calls that move them."""

    def __init__(self, *, process: bool = False) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        self.reconciles = Counter(
            f"{PREFIX}reconciles", "Policy reconciles, by result.", ["result"], registry=r
        )
        self.admissions = Counter(
            f"{PREFIX}admissions", "Pod admissions answered, by outcome.", ["outcome"], registry=r
        )
        self.admission_duration = Histogram(
            f"{PREFIX}admission_duration_seconds",
            "Time to answer a pod admission (reading the namespace's policies included).",
            buckets=ADMISSION_BUCKETS,
            registry=r,
        )
        self.status_writes = Counter(
            f"{PREFIX}status_writes", "Policy status PATCHes, by result.", ["result"], registry=r
        )
        self.status_write_duration = Histogram(
            f"{PREFIX}status_write_duration_seconds",
            "Time of one policy status PATCH.",
            buckets=STATUS_WRITE_BUCKETS,
            registry=r,
        )
        self.leader = Gauge(
            f"{PREFIX}leader", "1 while this replica writes (status, Events, ConfigMaps).", registry=r
        )
        self.config_pushes = Counter(
            f"{PREFIX}config_pushes",
            "Sidecars told, unasked, that the config their pod should run changed.",
            registry=r,
        )
        self.sessions_granted = Counter(
            f"{PREFIX}sessions_granted", "Report sessions granted to sidecars.", registry=r
        )
        for result in RECONCILE_RESULTS:  # every series exists from the start, at 0
            self.reconciles.labels(result=result)
        for outcome in ADMISSION_OUTCOMES:
            self.admissions.labels(outcome=outcome)
        for result in STATUS_WRITE_RESULTS:
            self.status_writes.labels(result=result)
        self._is_leader = False
        self._sources = _Sources()
        r.register(_Known(self._sources, lambda: self._is_leader))
        if process:  # the process-wide collectors: once per process, in the operator's registry
            for collector in (PROCESS_COLLECTOR, PLATFORM_COLLECTOR, GC_COLLECTOR):
                r.register(collector)

    # -- what the code calls ------------------------------------------------------------------------

    def reconciled(self, result: ReconcileResult) -> None:
        self.reconciles.labels(result=result).inc()

    def admitted(self, outcome: AdmissionOutcome, seconds: float) -> None:
        """One pod admission answered with `outcome`, `seconds` after it arrived."""
        self.admissions.labels(outcome=outcome).inc()
        self.admission_duration.observe(seconds)

    def set_leader(self, leader: bool) -> None:
        self._is_leader = leader
        self.leader.set(1 if leader else 0)

    def pushed_config(self, sidecars: int) -> None:
        self.config_pushes.inc(sidecars)

    def granted_session(self) -> None:
        self.sessions_granted.inc()

    def timed_status_writes(self, write: StatusWriter) -> StatusWriter:
        """`write`, counted and timed."""

        async def timed(namespace: str, name: str, patch: dict[str, Any]) -> dict[str, Any]:
            started = time.perf_counter()
            try:
                stored = await write(namespace, name, patch)
            except Exception:
                self._status_written("error", time.perf_counter() - started)
                raise
            self._status_written("ok", time.perf_counter() - started)
            return stored

        return timed

    def _status_written(self, result: str, seconds: float) -> None:
        self.status_writes.labels(result=result).inc()
        self.status_write_duration.observe(seconds)

    def watch_reports(self, reports: ReportCounts) -> None:
        """Read the report server's counters at scrape time (every replica has one)."""
        self._sources.reports = reports

    def watch_policies(self, policies: PolicyRecords | None) -> None:
        """Read the status loop's records at scrape time: the leader's, during its term; None after."""
        self._sources.policies = policies

    # -- reading them -------------------------------------------------------------------------------

    def render(self) -> bytes:
        return generate_latest(self.registry)


METRICS = OperatorMetrics(process=True)


def serve(host: str, port: int, metrics: OperatorMetrics = METRICS) -> WSGIServer:
    """Serve `metrics` at http://host:port/metrics from a thread of its own (prometheus_client's server):
    a scrape is answered whatever the event loop is doing, on every replica, leader or not."""
    server, _ = start_http_server(port, addr=host, registry=metrics.registry)
    logger.info("metrics at http://%s:%s/metrics", host if ":" not in host else f"[{host}]", port)
    return server
