"""The Grafana dashboard (charts/breakwater/dashboards/breakwater.json): a ConfigMap for Grafana's
dashboard sidecar when asked, a well-formed model, and PromQL that Prometheus' own parser (promtool)
accepts in every panel, on metrics docs/observability.md names. tests/cluster/test_metrics.py runs
the same queries on a Prometheus scraping a real operator and real sidecars."""

from __future__ import annotations

import json
import re
import subprocess
from pathlib import Path
from typing import Any

import yaml

from breakwater.testing.prometheus import dashboard_queries
from tests.chart import CHART_DIR, REPO, render

DASHBOARD = CHART_DIR / "dashboards" / "breakwater.json"
DOCS = REPO / "docs" / "observability.md"
METRIC = re.compile(r"\b((?:breakwater|process)_[a-z_]+)\b")
SUFFIXES = ("_bucket", "_sum", "_count")


def model() -> dict[str, Any]:
    loaded: dict[str, Any] = json.loads(DASHBOARD.read_text())
    return loaded


def metrics_used(expr: str) -> set[str]:
    names = set()
    for name in METRIC.findall(expr):
        for suffix in SUFFIXES:
            if name.endswith(suffix):
                name = name.removesuffix(suffix)
        names.add(name)
    return names


def test_no_dashboard_unless_asked(helm: Path, chart: Path) -> None:
    assert render(helm, chart).maybe("ConfigMap", "bw-breakwater-dashboard") is None


def test_the_config_map_carries_the_dashboard_and_the_label_grafanas_sidecar_selects(
    helm: Path, chart: Path
) -> None:
    rendered = render(
        helm,
        chart,
        release="bw",
        values={"grafanaDashboard": {"enabled": True, "annotations": {"grafana_folder": "Breakwater"}}},
    )
    config_map = rendered.one("ConfigMap", "bw-breakwater-dashboard")
    assert config_map["metadata"]["labels"]["grafana_dashboard"] == "1"
    assert config_map["metadata"]["namespace"] == "breakwater-system"
    assert config_map["metadata"]["annotations"] == {"grafana_folder": "Breakwater"}
    assert json.loads(config_map["data"]["breakwater.json"]) == model()

    elsewhere = render(
        helm, chart, release="bw", values={"grafanaDashboard": {"enabled": True, "namespace": "monitoring"}}
    )
    assert elsewhere.one("ConfigMap", "bw-breakwater-dashboard")["metadata"]["namespace"] == "monitoring"


def test_the_model_is_well_formed() -> None:
    dashboard = model()
    assert dashboard["uid"] == "breakwater"
    assert "id" not in dashboard, "an id would clash with the Grafana it is loaded into"
    panels = list(dashboard["panels"])
    for panel in list(panels):
        panels.extend(panel.get("panels") or [])
    ids = [p["id"] for p in panels]
    assert len(ids) == len(set(ids)), f"panel ids repeat: {ids}"
    for panel in panels:
        grid = panel["gridPos"]
        assert 0 <= grid["x"] < grid["x"] + grid["w"] <= 24, panel["title"]
        if panel["type"] == "row":
            continue
        assert panel["datasource"] == {"type": "prometheus", "uid": "${datasource}"}, panel["title"]
        refs = [t["refId"] for t in panel["targets"]]
        assert refs, panel["title"]
        assert len(refs) == len(set(refs)), panel["title"]
    variables = {v["name"] for v in dashboard["templating"]["list"]}
    for query in dashboard_queries(dashboard):
        used = set(re.findall(r"\$\{?([A-Za-z_]+)", query.expr)) - {"__rate_interval"}
        assert used <= variables, f"{query.panel}: unknown variable in {query.expr}"


def test_every_query_parses_as_promql(promtool: Path, tmp_path: Path) -> None:
    """Each query, its variables replaced as Grafana does, becomes a recording rule that `promtool check
    rules` parses: a typo in a function, a selector or a grouping fails here."""
    queries = dashboard_queries(model())
    assert len(queries) >= 15
    rules = [
        {"record": f"breakwater_dashboard:query{n}", "expr": q.promql(namespace="shop|billing")}
        for n, q in enumerate(queries)
    ]
    path = tmp_path / "dashboard_rules.yaml"
    path.write_text(yaml.safe_dump({"groups": [{"name": "dashboard", "rules": rules}]}))
    proc = subprocess.run(
        [str(promtool), "check", "rules", str(path)], capture_output=True, text=True, timeout=60, check=False
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_it_shows_fleet_breaker_state_rejections_and_trips_per_upstream_and_the_operator() -> None:
    used = set().union(*(metrics_used(q.expr) for q in dashboard_queries(model())))
    assert {
        "breakwater_upstream_state",
        "breakwater_upstream_rejections_total",
        "breakwater_upstream_trips_total",
        "breakwater_operator_upstream_pods",
        "breakwater_operator_admissions_total",
        "breakwater_operator_reports_rejected_total",
        "breakwater_operator_status_writes_total",
        "breakwater_operator_leader",
    } <= used


def test_every_metric_it_queries_is_documented() -> None:
    documented = set(METRIC.findall(DOCS.read_text()))
    used = set().union(*(metrics_used(q.expr) for q in dashboard_queries(model())))
    assert used - documented == set(), "queried but not in docs/observability.md"
