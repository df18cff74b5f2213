"""Adaptive thresholds, suggestions, self-ending overrides and a leader's hand-over of both, end to end:
real sidecar processes for kwok pods, real traffic to a flaky upstream on loopback, the real API server
(the fleet quorum: test_quorum.py)."""

from __future__ import annotations

import contextlib
import datetime
import json
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
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


def bundled_threshold(cluster: Cluster, namespace: str) -> int:
    """consecutiveFailures in the policy's bundle, as the leader last wrote it to the ConfigMap."""
    data = json.loads(
        cluster.kubectl("get", "configmap", "breakwater-sidecar-config", "-n", namespace, "-o", "json").stdout
    )["data"]
    bundle = json.loads(data["payments.json"])
    return int(
        next(u for u in bundle["upstreams"] if u["name"] == "payments")["breaker"]["consecutiveFailures"]
    )


def test_a_new_leader_delivers_what_the_last_one_tuned_from_the_history_it_handed_over(
    cluster: Cluster,
    namespace: str,
    running_operator: OperatorProcess,
    upstream: FlakyUpstream,
    fleet: SidecarFleet,
    tmp_path: Path,
) -> None:
    opt_in(cluster, namespace)
    cluster.apply(manifest(upstream.port, adaptive=FAST_ADAPTIVE), namespace=namespace)
    start_clients(cluster, namespace, fleet, replicas=2)
    upstream.failure_ratio = NOISY_FAILURE_RATIO

    def tuned_up() -> bool:
        effective = upstream_status(cluster, namespace).get("effective") or {}
        return (effective.get("source") or {}).get("consecutiveFailures") == "Adaptive"

    with Traffic(list(fleet.sidecars.values())):
        cluster.wait_for("consecutiveFailures tuned", tuned_up, timeout=120, interval=1)
    tuned = int(upstream_status(cluster, namespace)["effective"]["consecutiveFailures"])
    cluster.wait_for("the tuned value bundled", lambda: bundled_threshold(cluster, namespace) == tuned)

    second = running_operator.replica(tmp_path, "second")
    second.start()
    try:
        running_operator.stop()  # hands the Lease over, writing the histories first
        history = json.loads(
            cluster.kubectl(
                "get", "configmap", "breakwater-adaptive-history", "-n", namespace, "-o", "json"
            ).stdout
        )["data"]
        assert "payments.json" in history
        cluster.wait_for(
            "the second replica leads",
            lambda: "leading: policies are reconciled" in second.log_path.read_text(errors="replace"),
            timeout=60,
        )
        time.sleep(10)  # it has resumed (rendered) every policy by now, and its status loop ran
        # It goes on from the handed-over history: still tuned, not the spec's 5 again. (It may have
        # moved on by a step since, either way: the hysteresis is 5 s, and the same evidence puts the
        # run length at 10 % failures between 6 and 8. A fresh history would deliver the spec's 5.)
        effective = upstream_status(cluster, namespace)["effective"]
        assert effective["source"]["consecutiveFailures"] == "Adaptive", effective
        now = int(effective["consecutiveFailures"])
        assert now > 5, f"tuned {tuned} before the handover, {now} after"
        cluster.wait_for(
            "the effective value bundled",
            lambda: (
                bundled_threshold(cluster, namespace)
                == int(upstream_status(cluster, namespace)["effective"]["consecutiveFailures"])
            ),
        )
    finally:
        second.stop()  # not cleanup(): the webhook configuration is the first one's too
        running_operator.start()


@contextlib.contextmanager
def relaying_follower(first: OperatorProcess, workdir: Path, *flags: str) -> Iterator[OperatorProcess]:
    """A second replica of the module's operator (`first`), and `first` restarted so that the pods it
    injects report to the second, which relays every report to it while it leads: when `first` dies,
    the second leads and the sidecars' reports keep arriving (what the chart's Service does)."""
    original = first.extra_args
    second = first.replica(workdir, "second", extra_args=(*original, *flags))
    first.stop()
    first.extra_args = (*original, *flags, f"--report-url={second.report_url}")
    try:
        first.start()  # takes its Lease back at once (the same identity)
        second.start()
        yield second
    finally:
        second.stop()  # not cleanup(): the webhook configuration is the first one's too
        first.stop()
        first.extra_args = original
        first.start()


def test_a_leader_dying_mid_hold_leaves_the_hold_and_the_tuned_threshold_to_the_next(
    cluster: Cluster,
    namespace: str,
    running_operator: OperatorProcess,
    upstream: FlakyUpstream,
    fleet: SidecarFleet,
    tmp_path: Path,
) -> None:
    """SIGKILL of the leader less than a hysteresis after it tuned consecutiveFailures and while a quorum
    holds one sidecar open: the next leader, which wrote nothing before, keeps the hold (the held
    sidecar is never released, QuorumOpen is not posted again) and the tuned value (no sidecar goes back
    to the spec's 5), then releases the hold when the tripped pods' trials close them."""
    hysteresis = 30
    adaptive_spec = {**FAST_ADAPTIVE, "hysteresis": f"{hysteresis}s"}
    with relaying_follower(running_operator, tmp_path / "second", "--lease-seconds=6") as second:
        opt_in(cluster, namespace)
        cluster.apply(
            manifest(upstream.port, adaptive=adaptive_spec, coordination={"quorumPercent": 50}),
            namespace=namespace,
        )
        start_clients(cluster, namespace, fleet, replicas=3)
        first, other, third = sorted(fleet.sidecars.values(), key=lambda s: s.pod)
        upstream.failure_ratio = NOISY_FAILURE_RATIO

        def tuned_up() -> bool:
            effective = upstream_status(cluster, namespace).get("effective") or {}
            return (effective.get("source") or {}).get("consecutiveFailures") == "Adaptive"

        with Traffic(list(fleet.sidecars.values())):
            cluster.wait_for("consecutiveFailures tuned", tuned_up, timeout=150, interval=0.5)
        tuned_at = time.monotonic()
        tuned = int(upstream_status(cluster, namespace)["effective"]["consecutiveFailures"])
        assert tuned > 5
        cluster.wait_for(
            "every sidecar runs the tuned threshold",
            lambda: all(running_threshold(s) == tuned for s in fleet.sidecars.values()),
            timeout=15,
        )

        upstream.failure_ratio = 0.0
        assert [call(s.url(15210) + "/pay") for s in (first, other)] == [200, 200]  # no run of failures yet
        upstream.failing = True
        for sidecar in (first, other):  # 2 of 3 trip: the quorum holds the third open
            assert [call(sidecar.url(15210) + "/pay") for _ in range(tuned)] == [500] * tuned
        cluster.wait_for(
            "the third sidecar held open by the quorum",
            lambda: breaker_of(third)["mode"] == "ForceOpen",
            timeout=15,
        )
        running_operator.stop(signal.SIGKILL)  # no flush: only what was written when decided is left
        killed_at = time.monotonic()
        assert killed_at - tuned_at < hysteresis, "too slow to test inside one hysteresis period"
        cluster.wait_for(
            "the second replica leads",
            lambda: "leading: policies are reconciled" in second.log_path.read_text(errors="replace"),
            timeout=30,
        )
        watch_until = time.monotonic() + 15  # its resume rendered every policy, its status loop ran
        while time.monotonic() < watch_until:
            assert breaker_of(third)["mode"] == "ForceOpen", "the hold was lost with the leader"
            assert {running_threshold(s) for s in fleet.sidecars.values()} == {tuned}
            time.sleep(0.5)
        status = upstream_status(cluster, namespace)
        assert "2/3 pods tripped" in status["quorum"]
        assert status["effective"]["source"]["consecutiveFailures"] == "Adaptive"
        assert int(status["effective"]["consecutiveFailures"]) == tuned
        assert sum(int(e.get("count") or 1) for e in events_of(cluster, namespace, "QuorumOpen")) == 1

        upstream.failing = False  # recovery: the tripped pods probe, the new leader releases the third

        def probed_and_released() -> bool:
            for sidecar in (first, other):
                call(sidecar.url(15210) + "/pay")
            return breaker_of(third)["mode"] == "Enforce" and breaker_of(third)["state"] == "Closed"

        cluster.wait_for("the held sidecar released", probed_and_released, timeout=30, interval=1)
        assert "every pod is released" in second.log_path.read_text(errors="replace")
