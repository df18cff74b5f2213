"""The chart's PrometheusRule: `promtool check rules` accepts what it renders for any values, and
`promtool test rules` (data/prometheusrule_test.yaml) fires each alert on synthetic series, and only
when it should: the "open for N minutes" alert among them."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.chart import render

DATA = Path(__file__).parent / "data"
NS = "breakwater-system"
ALERTS = {
    "BreakwaterUpstreamOpen",
    "BreakwaterSidecarsNotReporting",
    "BreakwaterPodsNotInjected",
    "BreakwaterWebhookErrors",
    "BreakwaterNoLeader",
}


def rule_groups(helm: Path, chart: Path, values: dict[str, Any] | None = None) -> dict[str, Any]:
    rendered = render(
        helm,
        chart,
        release="bw",
        namespace=NS,
        values={"prometheusRule": {"enabled": True, **(values or {})}},
        api_versions=["monitoring.coreos.com/v1"],
    )
    rule = rendered.one("PrometheusRule")
    assert rule["metadata"]["namespace"] == NS
    return {"groups": rule["spec"]["groups"]}


def promtool_run(promtool: Path, *args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(promtool), *args], capture_output=True, text=True, timeout=120, check=False, cwd=cwd
    )


def test_no_rule_unless_asked(helm: Path, chart: Path) -> None:
    assert render(helm, chart, api_versions=["monitoring.coreos.com/v1"]).maybe("PrometheusRule") is None


@pytest.mark.parametrize(
    "values",
    [
        {},
        {
            "alertLabels": {"team": "platform"},
            "alerts": {
                "upstreamOpen": {"for": "1h30m", "podsFraction": 0.5, "severity": "critical"},
                "webhookErrors": {"errorRatio": 0},
                "sidecarsNotReporting": {"pods": 3},
            },
        },
    ],
    ids=["defaults", "tuned"],
)
def test_promtool_accepts_the_rendered_rules(
    helm: Path, chart: Path, promtool: Path, tmp_path: Path, values: dict[str, Any]
) -> None:
    groups = rule_groups(helm, chart, values)
    assert {r["alert"] for g in groups["groups"] for r in g["rules"]} == ALERTS
    (tmp_path / "rules.yaml").write_text(yaml.safe_dump(groups, sort_keys=False))
    proc = promtool_run(promtool, "check", "rules", "--lint=all", "--lint-fatal", "rules.yaml", cwd=tmp_path)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "SUCCESS: 5 rules found" in proc.stdout, proc.stdout


def test_each_alert_can_be_turned_off(helm: Path, chart: Path) -> None:
    off = {name: {"enabled": False} for name in ("upstreamOpen", "noLeader")}
    groups = rule_groups(helm, chart, {"alerts": off})
    assert {r["alert"] for g in groups["groups"] for r in g["rules"]} == ALERTS - {
        "BreakwaterUpstreamOpen",
        "BreakwaterNoLeader",
    }


def test_the_alerts_fire_on_synthetic_series_as_promtool_test_rules_expects(
    helm: Path, chart: Path, promtool: Path, tmp_path: Path
) -> None:
    (tmp_path / "rules.yaml").write_text(yaml.safe_dump(rule_groups(helm, chart), sort_keys=False))
    shutil.copy(DATA / "prometheusrule_test.yaml", tmp_path / "prometheusrule_test.yaml")
    tests = yaml.safe_load((DATA / "prometheusrule_test.yaml").read_text())["tests"]
    tested = {case["alertname"] for test in tests for case in test["alert_rule_test"] if case["exp_alerts"]}
    assert tested == ALERTS, "every alert is shown firing at least once"
    proc = promtool_run(promtool, "test", "rules", "prometheusrule_test.yaml", cwd=tmp_path)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "SUCCESS" in proc.stdout + proc.stderr, proc.stdout + proc.stderr


def test_a_broken_expectation_makes_promtool_test_rules_fail(
    helm: Path, chart: Path, promtool: Path, tmp_path: Path
) -> None:
    """The unit test above is not vacuous: `for: 10m` instead of 5m, and the 6-minute expectation fails."""
    values = {"alerts": {"upstreamOpen": {"for": "10m"}}}
    (tmp_path / "rules.yaml").write_text(yaml.safe_dump(rule_groups(helm, chart, values), sort_keys=False))
    shutil.copy(DATA / "prometheusrule_test.yaml", tmp_path / "prometheusrule_test.yaml")
    proc = promtool_run(promtool, "test", "rules", "prometheusrule_test.yaml", cwd=tmp_path)
    assert proc.returncode != 0
    assert "BreakwaterUpstreamOpen" in proc.stdout + proc.stderr
