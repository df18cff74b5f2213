"""Adaptive thresholds, suggestions and self-ending overrides, end to end: real sidecar processes for
kwok pods, real traffic to a flaky upstream on loopback, the real API server (a leader's hand-over of
them: test_adaptive_handover.py; the fleet quorum: test_quorum.py)."""

from __future__ import annotations

import datetime
import json
import subprocess
import sys
import time
from typing import Any

import pytest

from breakwater.testing.operator import OperatorProcess
from breakwater.testing.sidecars import SidecarFleet
from breakwater.testing.upstream import FlakyUpstream
from tests.cluster.adaptive_harness import (
    FAST_ADAPTIVE,
    NOISY_FAILURE_RATIO,
    Traffic,
    breaker_of,
    events_of,
    manifest,
    running_threshold,
    upstream_status,
)
from tests.cluster.harness import (
    call,
    condition,
    opt_in,
    policy,
    start_clients,
)
from tests.conftest import Cluster

pytestmark = pytest.mark.cluster


@pytest.fixture(scope="module")
def operator_args() -> tuple[str, ...]:
    return ("--stale-after-seconds=8",)


def test_tuned_thresholds_move_with_the_history_and_the_sidecars_run_them(
    cluster: Cluster,
    namespace: str,
    running_operator: OperatorProcess,
    upstream: FlakyUpstream,
    fleet: SidecarFleet,
) -> None:
    opt_in(cluster, namespace)
    # A 1-minute history: the noisy minute leaves it within a minute of the upstream turning clean.
    adaptive = {**FAST_ADAPTIVE, "historyWindow": "1m"}
    cluster.apply(manifest(upstream.port, adaptive=adaptive), namespace=namespace)
    start_clients(cluster, namespace, fleet, replicas=2)
    upstream.failure_ratio = NOISY_FAILURE_RATIO  # runs of 5 happen by chance

    def tuned_up() -> bool:
        effective = upstream_status(cluster, namespace).get("effective") or {}
        return (effective.get("source") or {}).get("consecutiveFailures") == "Adaptive" and int(
            effective.get("consecutiveFailures") or 0
        ) > 5

    with Traffic(list(fleet.sidecars.values())):
        cluster.wait_for("consecutiveFailures tuned above 5", tuned_up, timeout=120, interval=1)
        high = int(upstream_status(cluster, namespace)["effective"]["consecutiveFailures"])
        assert "failures in a row" in upstream_status(cluster, namespace)["effective"]["reason"]
        cluster.wait_for(
            "every sidecar runs the tuned threshold",
            lambda: all(running_threshold(s) == high for s in fleet.sidecars.values()),
            timeout=30,
        )
        wide = cluster.kubectl("get", "cbp", "payments", "-n", namespace, "-o", "wide").stdout
        assert "On (" in wide  # the TUNING column
        reasons = cluster.kubectl("get", "events", "-n", namespace, "-o", "json").stdout
        assert "ThresholdTuned" in reasons

        upstream.failure_ratio = 0.0  # the upstream became clean: the evidence for a high value goes

        def tuned_down() -> bool:
            return int(upstream_status(cluster, namespace)["effective"]["consecutiveFailures"]) < high

        cluster.wait_for("consecutiveFailures tuned down again", tuned_down, timeout=180, interval=1)
        low = int(upstream_status(cluster, namespace)["effective"]["consecutiveFailures"])
        assert low >= 3  # bounds.consecutiveFailures.min
        cluster.wait_for(
            "every sidecar runs the lower threshold",
            lambda: all(running_threshold(s) == low for s in fleet.sidecars.values()),
            timeout=30,
        )


def test_observe_mode_gets_suggestions_and_promote_prints_the_patch_that_enforces_them(
    cluster: Cluster,
    namespace: str,
    running_operator: OperatorProcess,
    upstream: FlakyUpstream,
    fleet: SidecarFleet,
) -> None:
    opt_in(cluster, namespace)
    quorum = {"quorumPercent": 50}  # valid, but Observe never rejects: accepted with a warning
    cluster.apply(
        manifest(upstream.port, mode="Observe", adaptive=FAST_ADAPTIVE, coordination=quorum),
        namespace=namespace,
    )
    start_clients(cluster, namespace, fleet, replicas=2)
    accepted = condition(policy(cluster, namespace, "payments"), "Accepted")
    assert "the quorum does nothing until spec.mode is Enforce" in accepted["message"], accepted
    assert (
        cluster.wait_for(
            "a Warning Event about the inert quorum", lambda: events_of(cluster, namespace, "InertSetting")
        )[0]["type"]
        == "Warning"
    )
    upstream.failure_ratio = NOISY_FAILURE_RATIO

    def suggested() -> dict[str, Any]:
        return dict(upstream_status(cluster, namespace).get("suggested") or {})

    with Traffic(list(fleet.sidecars.values())):
        cluster.wait_for(
            "a suggestion above 5", lambda: int(suggested().get("consecutiveFailures") or 0) > 5, timeout=120
        )
    status = upstream_status(cluster, namespace)
    assert status["effective"]["consecutiveFailures"] == 5  # Observe: nothing is delivered
    assert set(status["effective"]["source"].values()) == {"Configured"}
    assert all(running_threshold(s) == 5 for s in fleet.sidecars.values())
    assert "Suggesting" in cluster.kubectl("get", "cbp", "payments", "-n", namespace, "-o", "wide").stdout

    body = cluster.kubectl("get", "cbp", "payments", "-n", namespace, "-o", "json").stdout
    patch = subprocess.run(
        [sys.executable, "-m", "breakwater.cli", "promote", "-"],
        input=body,
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    cluster.kubectl("patch", "cbp", "payments", "-n", namespace, "--type", "merge", "-p", patch)
    spec = policy(cluster, namespace, "payments")["spec"]
    assert (
        spec["trip"]["consecutiveFailures"] == int(suggested()["consecutiveFailures"])
        or spec["trip"]["consecutiveFailures"] > 5
    )


def test_an_override_ends_on_every_sidecar_on_time_with_the_operator_stopped(
    cluster: Cluster,
    namespace: str,
    running_operator: OperatorProcess,
    upstream: FlakyUpstream,
    fleet: SidecarFleet,
) -> None:
    opt_in(cluster, namespace)
    until = datetime.datetime.now(datetime.UTC) + datetime.timedelta(seconds=30)
    stamp = until.strftime("%Y-%m-%dT%H:%M:%SZ")
    override = {"mode": "ForceOpen", "until": stamp, "reason": "CHG-7 failover drill"}
    cluster.apply(manifest(upstream.port, override=override), namespace=namespace)
    start_clients(cluster, namespace, fleet, replicas=2)
    cluster.wait_for(
        "every sidecar forced open",
        lambda: all(breaker_of(s)["mode"] == "ForceOpen" for s in fleet.sidecars.values()),
        timeout=30,
    )
    status = policy(cluster, namespace, "payments")["status"]
    assert status["override"]["reason"] == "CHG-7 failover drill"
    assert status["override"]["active"] is True
    assert "ForceOpen (override" in cluster.kubectl("get", "cbp", "payments", "-n", namespace).stdout

    running_operator.stop()
    try:
        ends = until.timestamp()
        while time.time() < ends - 1:
            assert all(breaker_of(s)["mode"] == "ForceOpen" for s in fleet.sidecars.values())
            time.sleep(1)
        while time.time() < ends + 2.5:  # the sidecars' own clock, checked twice a second
            time.sleep(0.5)
        assert {breaker_of(s)["mode"] for s in fleet.sidecars.values()} == {"Enforce"}
        assert all(call(s.url(15210) + "/pay") == 200 for s in fleet.sidecars.values())
    finally:
        running_operator.start()
    cluster.wait_for(
        "the status says the override ended",
        lambda: condition(policy(cluster, namespace, "payments"), "OverrideExpired").get("reason") == "Ended",
        timeout=60,
    )


def test_an_override_already_expired_when_applied_gets_a_condition_and_a_warning(
    cluster: Cluster, namespace: str, running_operator: OperatorProcess
) -> None:
    override = {"mode": "ForceOpen", "until": "2020-01-01T00:00:00Z", "reason": "copied from an old ticket"}
    cluster.apply(manifest(8080, override=override), namespace=namespace)
    cluster.wait_for(
        "OverrideExpired=True, ExpiredWhenApplied",
        lambda: (
            condition(policy(cluster, namespace, "payments"), "OverrideExpired").get("reason")
            == "ExpiredWhenApplied"
        ),
        timeout=30,
    )
    events = json.loads(cluster.kubectl("get", "events", "-n", namespace, "-o", "json").stdout)["items"]
    assert any(e["reason"] == "OverrideExpired" and e["type"] == "Warning" for e in events)
