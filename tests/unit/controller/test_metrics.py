"""The operator's metrics: every series exists from the start, each call moves what it names, the report
server's own counters show through (driven with real datagrams), policy figures come from the status
the loop last wrote and only on the leader, and /metrics is served over real HTTP."""

from __future__ import annotations

import time
import urllib.request
from collections.abc import Iterator
from typing import Any

import pytest
from prometheus_client.parser import text_string_to_metric_families

from breakwater.api import datagram
from breakwater.api.report import SidecarReport, UpstreamReport
from breakwater.controller import metrics as metrics_module
from breakwater.controller.metrics import (
    ADMISSION_OUTCOMES,
    RECONCILE_RESULTS,
    REPORT_REJECT_REASONS,
    OperatorMetrics,
)
from breakwater.controller.refresher import PolicyRecord
from breakwater.controller.reports import FleetStore, ReportServer
from breakwater.controller.state import BundleCache
from breakwater.testing.controlplane import free_port

Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]


def samples(text: bytes | str) -> Samples:
    raw = text.decode() if isinstance(text, bytes) else text
    found: Samples = {}
    for family in text_string_to_metric_families(raw):
        for sample in family.samples:
            found[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return found


def value(found: Samples, name: str, **labels: str) -> float:
    return found[(name, tuple(sorted(labels.items())))]


@pytest.fixture
def fresh() -> OperatorMetrics:
    return OperatorMetrics()


def test_every_labelled_series_exists_at_zero_before_anything_happened(fresh: OperatorMetrics) -> None:
    found = samples(fresh.render())
    for result in RECONCILE_RESULTS:
        assert value(found, "breakwater_operator_reconciles_total", result=result) == 0
    for outcome in ADMISSION_OUTCOMES:
        assert value(found, "breakwater_operator_admissions_total", outcome=outcome) == 0
    for reason in REPORT_REJECT_REASONS:
        assert value(found, "breakwater_operator_reports_rejected_total", reason=reason) == 0
    for result in ("ok", "error"):
        assert value(found, "breakwater_operator_status_writes_total", result=result) == 0
    for name in (
        "breakwater_operator_reports_received_total",
        "breakwater_operator_sessions_granted_total",
        "breakwater_operator_config_pushes_total",
        "breakwater_operator_leader",
        "breakwater_operator_admission_duration_seconds_count",
        "breakwater_operator_status_write_duration_seconds_count",
    ):
        assert value(found, name) == 0, name


def test_each_call_moves_what_it_names(fresh: OperatorMetrics) -> None:
    fresh.reconciled("accepted")
    fresh.reconciled("accepted")
    fresh.reconciled("invalid")
    fresh.admitted("injected", 0.004)
    fresh.admitted("not-selected", 0.0002)
    fresh.admitted("error", 3.0)
    fresh.pushed_config(7)
    fresh.granted_session()
    fresh.set_leader(True)
    found = samples(fresh.render())
    assert value(found, "breakwater_operator_reconciles_total", result="accepted") == 2
    assert value(found, "breakwater_operator_reconciles_total", result="invalid") == 1
    assert value(found, "breakwater_operator_admissions_total", outcome="injected") == 1
    assert value(found, "breakwater_operator_admissions_total", outcome="error") == 1
    assert value(found, "breakwater_operator_admission_duration_seconds_count") == 3
    assert value(found, "breakwater_operator_admission_duration_seconds_bucket", le="0.005") == 2
    assert value(found, "breakwater_operator_admission_duration_seconds_bucket", le="2.5") == 2
    assert value(found, "breakwater_operator_admission_duration_seconds_bucket", le="5.0") == 3
    assert value(found, "breakwater_operator_config_pushes_total") == 7
    assert value(found, "breakwater_operator_sessions_granted_total") == 1
    assert value(found, "breakwater_operator_leader") == 1
    fresh.set_leader(False)
    assert value(samples(fresh.render()), "breakwater_operator_leader") == 0


async def test_status_writes_are_counted_and_timed_and_failures_still_raise(fresh: OperatorMetrics) -> None:
    async def write(namespace: str, name: str, patch: dict[str, Any]) -> dict[str, Any]:
        if name == "gone":
            raise LookupError("404")
        return {"written": patch}

    timed = fresh.timed_status_writes(write)
    assert await timed("shop", "payments", {"a": 1}) == {"written": {"a": 1}}
    with pytest.raises(LookupError):
        await timed("shop", "gone", {})
    found = samples(fresh.render())
    assert value(found, "breakwater_operator_status_writes_total", result="ok") == 1
    assert value(found, "breakwater_operator_status_writes_total", result="error") == 1
    assert value(found, "breakwater_operator_status_write_duration_seconds_count") == 2


SECRET = b"unit-test secret"


def report_bytes(namespace: str, pod: str, seq: int) -> bytes:
    report = SidecarReport(
        namespace=namespace,
        pod=pod,
        seq=seq,
        config_hash="h",
        upstreams=[UpstreamReport(name="payments", policy=f"{namespace}/payments", state="Closed")],
    )
    return report.model_dump_json(by_alias=True).encode()


async def test_report_datagrams_show_as_received_and_rejected_by_the_servers_own_reasons(
    fresh: OperatorMetrics,
) -> None:
    """A real ReportServer fed one datagram per way it refuses one: each reason it counts is a reason
    the metrics name, and received is accepted plus rejected."""
    server = ReportServer(
        api=None, bundles=BundleCache(None), store=FleetStore(), pod_labels=lambda ns, p: None, secret=SECRET
    )
    fresh.watch_reports(server)
    addr = ("127.0.0.1", 40000)
    live = datagram.Session("shop", "checkout-1", "uid-1", int(time.time()) + 600).encode()
    key = datagram.session_key(SECRET, live)
    expired = datagram.Session("shop", "checkout-1", "uid-1", int(time.time()) - 1).encode()
    server.datagram_received(b"not a datagram", addr)  # malformed
    server.datagram_received(
        datagram.report_datagram(expired, datagram.session_key(SECRET, expired), b"{}"), addr
    )
    server.datagram_received(
        datagram.report_datagram(live, b"another key", report_bytes("shop", "checkout-1", 1)), addr
    )
    server.datagram_received(datagram.report_datagram(live, key, b'{"not": "a report"}'), addr)  # invalid
    server.datagram_received(datagram.report_datagram(live, key, report_bytes("shop", "checkout-2", 1)), addr)
    server.datagram_received(datagram.report_datagram(live, key, report_bytes("shop", "checkout-1", 5)), addr)
    server.datagram_received(datagram.report_datagram(live, key, report_bytes("shop", "checkout-1", 5)), addr)
    assert server.accepted == 1
    assert set(server.rejected) == set(REPORT_REJECT_REASONS)
    found = samples(fresh.render())
    for reason in REPORT_REJECT_REASONS:
        assert value(found, "breakwater_operator_reports_rejected_total", reason=reason) == 1, reason
    assert value(found, "breakwater_operator_reports_received_total") == 1 + len(REPORT_REJECT_REASONS)
    assert value(found, "breakwater_operator_reports_relayed_total") == 0  # no leader to relay to


def record(namespace: str, name: str, status: dict[str, Any]) -> PolicyRecord:
    return PolicyRecord({"metadata": {"name": name, "namespace": namespace}}, status)


class Records:
    def __init__(self, records: dict[tuple[str, str], PolicyRecord]) -> None:
        self.records = records


def test_policy_figures_come_from_the_last_status_and_only_on_the_leader(fresh: OperatorMetrics) -> None:
    status = {
        "pods": {"selected": 5, "injected": 4, "reporting": 2, "stale": 2},
        "upstreams": [{"name": "payments", "state": "Mixed", "open": 1, "halfOpen": 0, "closed": 1}],
    }
    fresh.watch_policies(Records({("shop", "payments"): record("shop", "payments", status)}))
    assert not any(name.startswith("breakwater_operator_pods") for name, _ in samples(fresh.render()))
    fresh.set_leader(True)
    found = samples(fresh.render())
    ids = {"namespace": "shop", "policy": "payments"}
    assert value(found, "breakwater_operator_pods_selected", **ids) == 5
    assert value(found, "breakwater_operator_pods_not_injected", **ids) == 1
    assert value(found, "breakwater_operator_pods_not_reporting", **ids) == 2
    up = {**ids, "upstream": "payments"}
    assert value(found, "breakwater_operator_upstream_pods", **up, state="open") == 1
    assert value(found, "breakwater_operator_upstream_pods", **up, state="half_open") == 0
    assert value(found, "breakwater_operator_upstream_pods", **up, state="closed") == 1
    assert value(found, "breakwater_operator_upstream_pods", **up, state="would_open") == 0


def test_a_policy_without_status_yet_counts_zero_pods(fresh: OperatorMetrics) -> None:
    fresh.set_leader(True)
    fresh.watch_policies(Records({("shop", "new"): record("shop", "new", {})}))
    found = samples(fresh.render())
    assert value(found, "breakwater_operator_pods_selected", namespace="shop", policy="new") == 0
    assert value(found, "breakwater_operator_pods_not_injected", namespace="shop", policy="new") == 0


@pytest.fixture
def served(fresh: OperatorMetrics) -> Iterator[tuple[OperatorMetrics, int]]:
    port = free_port()
    server = metrics_module.serve("127.0.0.1", port, fresh)
    yield fresh, port
    server.shutdown()
    server.server_close()


def test_metrics_are_served_over_http_in_prometheus_text(served: tuple[OperatorMetrics, int]) -> None:
    fresh, port = served
    fresh.reconciled("deleted")
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as resp:
        assert resp.status == 200
        assert resp.headers["Content-Type"].startswith("text/plain")
        found = samples(resp.read())
    assert value(found, "breakwater_operator_reconciles_total", result="deleted") == 1


def test_the_process_wide_registry_carries_the_process_metrics() -> None:
    names = {name for name, _ in samples(metrics_module.METRICS.render())}
    assert "process_resident_memory_bytes" in names
    assert "python_info" in names
