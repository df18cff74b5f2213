"""The operator's /metrics on a real API server, after a real flow: policies, pods admitted by its
webhook, real sidecars reporting, a real upstream that fails, trips and recovers, a config push, a
forged report, a deletion. The exposition is parsed with prometheus_client's own parser and its
figures checked against what happened; every metric docs/observability.md names is served.

Then the same flow seen by a real Prometheus server (built from its Go module, `make prometheus`)
scraping the operator and the sidecars: every query of the Grafana dashboard answers with data, the
ones about what happened with non-zero data, and the chart's PrometheusRule, loaded into it,
fires BreakwaterUpstreamOpen while the upstream is open.
"""

from __future__ import annotations

import json
import os
import re
import socket
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import yaml

from breakwater.errors import ControlPlaneError
from breakwater.testing.controlplane import free_port
from breakwater.testing.operator import OperatorProcess
from breakwater.testing.prometheus import PrometheusServer, Target, dashboard_queries, find_binaries
from breakwater.testing.sidecars import SidecarFleet
from breakwater.testing.upstream import FlakyUpstream
from tests.chart import CHART_DIR, REPO, prepare_chart, render
from tests.cluster.harness import (
    Samples,
    condition,
    deployment_manifest,
    install_crd,
    opt_in,
    policy,
    scrape,
    value,
    wait_accepted,
)
from tests.conftest import Cluster

pytestmark = pytest.mark.cluster

OPERATOR_NS = "breakwater-system"  # the harness' --operator-namespace: the release namespace
DOCS = REPO / "docs" / "observability.md"
DASHBOARD = CHART_DIR / "dashboards" / "breakwater.json"
# What the dashboard's queries must show non-zero after this flow (the others may be all zero).
MUST_MOVE = {
    "Breakers by state",
    "Rejections per upstream",
    "Trips per upstream",
    "Requests by outcome",
    "Fallbacks served",
    "Pods by breaker state, per upstream",
    "Admissions by outcome",
    "Reports received and rejected",
    "Status writes",
    "Leader",
}

REJECTED = "breakwater_operator_reports_rejected_total"


@pytest.fixture(scope="module")
def operator_args() -> tuple[str, ...]:
    return ("--stale-after-seconds=8",)


def documented(section: str) -> set[str]:
    """The metric names in the first column of a table under `## <section>` of docs/observability.md."""
    text = DOCS.read_text().split(f"## {section}\n", 1)[1].split("\n## ", 1)[0]
    return set(re.findall(r"^\| `([a-z_]+)` \|", text, flags=re.M))


def base(name: str) -> str:
    """A sample's or a family's metric name without the suffixes of counters and histograms."""
    return re.sub(r"(_total)?(_bucket|_sum|_count|_created)?$", "", name)


def legend(template: str, labels: dict[str, str]) -> str:
    """A Grafana legendFormat filled in from a series' labels."""
    return re.sub(r"\{\{\s*(\w+)\s*\}\}", lambda m: labels.get(m.group(1), ""), template).strip()


def call(url: str) -> int:
    try:
        with urllib.request.urlopen(url, timeout=5) as resp:
            return int(resp.status)
    except urllib.error.HTTPError as exc:
        return int(exc.code)


def breaker_policy(port: int, *, open_for: str = "3s") -> str:
    return json.dumps(
        {
            "apiVersion": "breakwater.dev/v1alpha1",
            "kind": "CircuitBreakerPolicy",
            "metadata": {"name": "payments"},
            "spec": {
                "selector": {"matchLabels": {"app": "checkout"}},
                "upstreams": [{"name": "payments", "host": "127.0.0.1", "port": port, "listenPort": 15210}],
                "mode": "Enforce",
                "trip": {"consecutiveFailures": 3},
                "open": {"duration": open_for, "maxDuration": "5m", "jitter": 0},
                "halfOpen": {"permittedCalls": 1, "successesToClose": 1},
                "fallback": {"kind": "Static", "static": {"status": 503, "body": "later"}},
            },
        }
    )


def upstream_state(cluster: Cluster, namespace: str) -> str:
    for up in (policy(cluster, namespace, "payments").get("status") or {}).get("upstreams") or ():
        if up["name"] == "payments":
            return str(up.get("state"))
    return ""


def prometheus_binary() -> Path | None:
    try:
        return find_binaries("promtool", "prometheus", build=False) / "prometheus"
    except ControlPlaneError:
        return None


def alert_rules(cluster: Cluster, workdir: Path) -> Path:
    """The chart's PrometheusRule, rendered for the harness' namespace with an upstream alert quick
    enough for a test (`for: 2s`), as a Prometheus rule file."""
    chart = prepare_chart(workdir)
    rendered = render(
        cluster.tool("helm"),
        chart,
        namespace=OPERATOR_NS,
        values={
            "image": {"repository": "registry.example/breakwater"},
            "prometheusRule": {"enabled": True, "alerts": {"upstreamOpen": {"for": "2s"}}},
        },
        api_versions=["monitoring.coreos.com/v1"],
    )
    path = workdir / "rules.yaml"
    path.write_text(yaml.safe_dump({"groups": rendered.one("PrometheusRule")["spec"]["groups"]}))
    return path


@dataclass
class Flow:
    """What the flow saw: the operator's and a sidecar's scrapes while the upstream was open, the
    operator's at the end, and Prometheus' answers."""

    namespace: str
    started: float = 0.0
    ended: float = 0.0
    open_operator: Samples = field(default_factory=dict)
    open_sidecar_families: set[str] = field(default_factory=set)
    end_families: set[str] = field(default_factory=set)
    end: Samples = field(default_factory=dict)
    prometheus: PrometheusServer | None = None
    firing: list[dict[str, Any]] = field(default_factory=list)
    events: dict[str, float] = field(default_factory=dict)


@pytest.fixture(scope="module")
def flow(
    cluster: Cluster, operator: OperatorProcess, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Flow]:
    namespace = f"t-metrics-{os.getpid()}-{int(time.time()) % 100000}"
    cluster.kubectl("create", "namespace", namespace)
    cluster.wait_for(
        "default ServiceAccount",
        lambda: cluster.kubectl("get", "sa", "default", "-n", namespace, check=False).returncode == 0,
    )
    upstream = FlakyUpstream().start()
    fleet = SidecarFleet(
        kubectl=cluster.tool("kubectl"),
        kubeconfig=cluster.kubeconfig,
        namespace=namespace,
        report_interval=1.0,
    )
    metrics_url = f"http://127.0.0.1:{operator.metrics_port}/metrics"
    seen = Flow(namespace)
    try:
        # Prometheus first (when built): it sees the admissions too, and the sidecars once they run.
        binary = prometheus_binary()
        if binary is not None:
            workdir = tmp_path_factory.mktemp("prometheus")
            operator_target = Target(
                "breakwater-operator",
                f"127.0.0.1:{operator.metrics_port}",
                {"namespace": OPERATOR_NS, "pod": "operator-0"},
                honor_labels=True,  # as the chart's PodMonitor: a policy's series keep its namespace
            )
            server = PrometheusServer(
                binary,
                workdir,
                [operator_target],
                rule_files=[alert_rules(cluster, workdir)],
                jobs={"breakwater-sidecars": False},
            )
            seen.prometheus = server.start()
            # Scraped before anything happens: a counter's first sample must be its zero.
            cluster.wait_for(
                "the operator scraped",
                lambda: [t["health"] for t in server.active_targets()] == ["up"],
                timeout=30,
            )
        seen.started = time.time()
        opt_in(cluster, namespace)
        cluster.apply(breaker_policy(upstream.port), namespace=namespace)
        wait_accepted(cluster, namespace, "payments")
        cluster.apply(
            deployment_manifest("checkout", node=cluster.node_name, replicas=2), namespace=namespace
        )
        cluster.apply(
            deployment_manifest("other", node=cluster.node_name, app="other", replicas=1), namespace=namespace
        )

        def started() -> bool:
            fleet.sync()
            return len(fleet.sidecars) == 2

        cluster.wait_for("2 injected, running pods", started, timeout=60, interval=0.5)
        fleet.wait_ready()
        if seen.prometheus is not None:
            prometheus = seen.prometheus
            prometheus.add_targets(
                *(
                    Target(
                        "breakwater-sidecars",
                        s.admin_url.removeprefix("http://"),
                        {"namespace": namespace, "pod": s.pod},
                    )
                    for s in fleet.sidecars.values()
                )
            )
            cluster.wait_for(
                "every target up",
                lambda: sorted(t["health"] for t in prometheus.active_targets()) == ["up"] * 3,
                timeout=30,
            )

        for _ in range(5):  # healthy traffic, a few scrapes' worth
            for sidecar in fleet.sidecars.values():
                assert call(sidecar.url(15210) + "/pay") == 200
            time.sleep(1)
        cluster.wait_for(
            "Closed and Ready",
            lambda: (
                upstream_state(cluster, namespace) == "Closed"
                and condition(policy(cluster, namespace, "payments"), "Ready").get("status") == "True"
            ),
            timeout=30,
        )

        upstream.failing = True
        seen.events["failing"] = time.time()
        for sidecar in fleet.sidecars.values():
            assert [call(sidecar.url(15210) + "/pay") for _ in range(3)] == [500, 500, 500]
        cluster.wait_for(
            "Open on the resource", lambda: upstream_state(cluster, namespace) == "Open", timeout=10
        )

        def open_everywhere() -> bool:
            _, samples = scrape(metrics_url)
            seen.open_operator = samples
            return value(samples, "breakwater_operator_upstream_pods", namespace=namespace, state="open") == 2

        cluster.wait_for("2 pods open in the operator's metrics", open_everywhere, timeout=10)
        seen.open_sidecar_families, _ = scrape(next(iter(fleet.sidecars.values())).admin_url + "/metrics")
        # Keep it failing (each half-open probe fails) until Prometheus has seen it open a while and
        # the rule has fired; callers get the fallback meanwhile.
        deadline = time.monotonic() + (40 if seen.prometheus else 4)
        while time.monotonic() < deadline:
            for sidecar in fleet.sidecars.values():
                call(sidecar.url(15210) + "/pay")
            if seen.prometheus:
                seen.firing = [a for a in seen.prometheus.alerts() if a["state"] == "firing"]
                if any(a["labels"]["alertname"] == "BreakwaterUpstreamOpen" for a in seen.firing):
                    break
            time.sleep(0.5)

        upstream.failing = False
        seen.events["healed"] = time.time()

        def closed() -> bool:
            for sidecar in fleet.sidecars.values():
                call(sidecar.url(15210) + "/pay")
            return upstream_state(cluster, namespace) == "Closed"

        cluster.wait_for("Closed again", closed, timeout=30, interval=0.5)

        # A changed policy: the operator tells the running sidecars (a config push).
        cluster.kubectl("patch", "cbp", "payments", "-n", namespace, "--type=merge",
                        "-p", '{"spec": {"open": {"duration": "4s"}}}')  # fmt: skip
        cluster.wait_for(
            "a config push",
            lambda: value(scrape(metrics_url)[1], "breakwater_operator_config_pushes_total") >= 1,
            timeout=30,
        )
        # A datagram that is no report at all.
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as udp:
            udp.sendto(b"not a report", ("127.0.0.1", operator.report_port))
        cluster.wait_for(
            "the malformed datagram counted",
            lambda: value(scrape(metrics_url)[1], REJECTED, reason="malformed") >= 1,
            timeout=10,
        )
        for _ in range(3):  # a few more scrapes of the recovered fleet
            for sidecar in fleet.sidecars.values():
                call(sidecar.url(15210) + "/pay")
            time.sleep(1)
        seen.ended = time.time()
        cluster.kubectl("delete", "cbp", "payments", "-n", namespace)
        cluster.wait_for(
            "the deletion counted",
            lambda: (
                value(scrape(metrics_url)[1], "breakwater_operator_reconciles_total", result="deleted") >= 1
            ),
            timeout=30,
        )
        seen.end_families, seen.end = scrape(metrics_url)
        yield seen
    finally:
        if seen.prometheus is not None:
            seen.prometheus.stop()
        fleet.stop()
        upstream.stop()
        cluster.kubectl("delete", "namespace", namespace, "--wait=false", check=False)


def test_the_metrics_tell_what_happened(flow: Flow) -> None:
    end, during = flow.end, flow.open_operator
    assert value(end, "breakwater_operator_reconciles_total", result="accepted") >= 2  # created, patched
    assert value(end, "breakwater_operator_reconciles_total", result="deleted") >= 1
    assert value(end, "breakwater_operator_reconciles_total", result="error") == 0
    assert value(end, "breakwater_operator_admissions_total", outcome="injected") >= 2
    assert value(end, "breakwater_operator_admissions_total", outcome="not-selected") >= 1
    assert value(end, "breakwater_operator_admissions_total", outcome="error") == 0
    admissions = value(end, "breakwater_operator_admissions_total")
    assert value(end, "breakwater_operator_admission_duration_seconds_count") == admissions
    assert value(end, "breakwater_operator_admission_duration_seconds_bucket", le="+Inf") == admissions
    assert 0 < value(end, "breakwater_operator_admission_duration_seconds_sum") < admissions * 2.0
    assert value(end, "breakwater_operator_sessions_granted_total") >= 2
    assert value(end, "breakwater_operator_reports_received_total") >= 10  # 2 sidecars, 1 s apart
    assert value(end, "breakwater_operator_reports_rejected_total", reason="malformed") >= 1
    assert value(end, "breakwater_operator_reports_rejected_total", reason="bad-signature") == 0
    assert value(end, "breakwater_operator_config_pushes_total") >= 1
    writes = value(end, "breakwater_operator_status_writes_total", result="ok")
    assert writes >= 3  # Accepted, Ready, Open, Closed...
    assert value(end, "breakwater_operator_status_writes_total", result="error") == 0
    assert value(end, "breakwater_operator_status_write_duration_seconds_count") == writes
    assert value(end, "breakwater_operator_leader") == 1

    ns = flow.namespace
    assert value(during, "breakwater_operator_pods_selected", namespace=ns, policy="payments") == 2
    assert value(during, "breakwater_operator_pods_not_injected", namespace=ns, policy="payments") == 0
    assert value(during, "breakwater_operator_pods_not_reporting", namespace=ns, policy="payments") == 0
    up = {"namespace": ns, "policy": "payments", "upstream": "payments"}
    assert value(during, "breakwater_operator_upstream_pods", **up, state="open") == 2
    assert value(during, "breakwater_operator_upstream_pods", **up, state="closed") == 0
    # the deleted policy's figures are gone with it
    assert value(end, "breakwater_operator_pods_selected", namespace=ns) == 0


def test_every_documented_metric_is_served(flow: Flow) -> None:
    operator = documented("Operator metrics")
    sidecar = documented("Sidecar metrics")
    assert len(operator) >= 14
    assert len(sidecar) >= 13
    served = {base(n) for n, _ in flow.end} | {base(n) for n, _ in flow.open_operator}
    assert {base(n) for n in operator} - served == set(), "documented but not served by the operator"
    ours = {n for n in served if n.startswith("breakwater_")}
    assert ours - {base(n) for n in operator} == set(), "served by the operator but not documented"
    families = {base(n) for n in flow.open_sidecar_families}
    assert {base(n) for n in sidecar} - families == set(), "documented but not served by a sidecar"
    assert {"process_cpu_seconds", "process_resident_memory_bytes"} <= flow.end_families


def test_prometheus_answers_every_dashboard_query_and_fires_the_open_alert(flow: Flow) -> None:
    prometheus = flow.prometheus
    if prometheus is None:
        reason = "no prometheus binary (run `make prometheus`)"
        if os.environ.get("BREAKWATER_REQUIRE_CLUSTER") == "1":
            pytest.fail(reason, pytrace=False)
        pytest.skip(reason)
    queries = dashboard_queries(json.loads(DASHBOARD.read_text()))
    empty, still = [], []
    moved: set[str] = set()
    results: dict[str, list[dict[str, Any]]] = {}
    for query in queries:
        series = prometheus.query_range(
            query.promql(namespace=flow.namespace + "|" + OPERATOR_NS, rate_interval="5s"),
            flow.started,
            flow.ended,
            1,
        )
        if not series:
            empty.append(f"{query.panel} [{query.ref}]: {query.expr}")
            continue
        if any(float(v) > 0 for s in series for _, v in s["values"] if v != "NaN"):
            moved.add(query.panel)
        results.setdefault(query.panel, []).extend(
            {"legend": legend(query.legend, s["metric"]), "values": s["values"]} for s in series
        )
    if out := os.environ.get("BREAKWATER_DASHBOARD_DATA"):  # hack/dashboard_picture.py draws it
        record = {
            "namespace": flow.namespace,
            "started": flow.started,
            "ended": flow.ended,
            "events": flow.events,
            "panels": results,
        }
        Path(out).write_text(json.dumps(record))
    assert empty == [], "dashboard queries without data:\n" + "\n".join(empty)
    still = sorted(MUST_MOVE - moved)
    assert still == [], f"panels that stayed at zero through the flow: {still}"
    names = {a["labels"]["alertname"] for a in flow.firing}
    assert "BreakwaterUpstreamOpen" in names, flow.firing
    fired = next(a for a in flow.firing if a["labels"]["alertname"] == "BreakwaterUpstreamOpen")
    assert (fired["labels"]["namespace"], fired["labels"]["upstream"]) == (flow.namespace, "payments")
    assert names <= {"BreakwaterUpstreamOpen"}, f"alerts that should not fire: {names}"


def leader_gauge(port: int) -> float | None:
    try:
        _, samples = scrape(f"http://127.0.0.1:{port}/metrics")
    except OSError:
        return None
    return value(samples, "breakwater_operator_leader")


def test_the_leader_gauge_follows_the_lease_across_a_failover(
    cluster: Cluster, tmp_path_factory: pytest.TempPathFactory
) -> None:
    """Two replicas of one operator: exactly one reports leader 1, and when it stops (SIGTERM, the
    Lease released) the other reports 1; the one that does not lead exports no policy figures."""
    install_crd(cluster)
    ports = {"replica-a": free_port(), "replica-b": free_port()}
    first = OperatorProcess(
        kubeconfig=cluster.kubeconfig,
        kubectl=cluster.tool("kubectl"),
        workdir=tmp_path_factory.mktemp("replica-a"),
        identity="replica-a",
        metrics_port=ports["replica-a"],
    )
    second = OperatorProcess(
        kubeconfig=cluster.kubeconfig,
        kubectl=cluster.tool("kubectl"),
        workdir=tmp_path_factory.mktemp("replica-b"),
        configuration=first.configuration,
        cert_dir=first.certs,
        identity="replica-b",
        metrics_port=ports["replica-b"],
    )
    try:
        first.start()
        second.start()

        def one_leader() -> dict[str, float | None] | None:
            gauges = {replica: leader_gauge(port) for replica, port in ports.items()}
            return gauges if sorted(str(g) for g in gauges.values()) == ["0.0", "1.0"] else None

        gauges = cluster.wait_for("one leader of two", one_leader, timeout=30)
        leader = next(r for r, g in gauges.items() if g == 1)
        other = next(r for r in ports if r != leader)
        _, samples = scrape(f"http://127.0.0.1:{ports[other]}/metrics")
        assert not [
            n
            for n, _ in samples
            if n.startswith(("breakwater_operator_pods", "breakwater_operator_upstream"))
        ]
        (first if leader == first.identity else second).stop()
        cluster.wait_for("the other replica leads", lambda: leader_gauge(ports[other]) == 1, timeout=30)
    finally:
        first.cleanup()
        second.cleanup()
