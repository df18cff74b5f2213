"""A leader's hand-over of adaptive state, end to end: the next leader delivers what the last one tuned
from the history it wrote, and a hold and a tuned value outlive a leader that dies mid-hold (real
sidecar processes for kwok pods, a flaky upstream on loopback, the real API server)."""

from __future__ import annotations

import contextlib
import json
import signal
import time
from collections.abc import Iterator
from pathlib import Path

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
    opt_in,
    start_clients,
)
from tests.conftest import Cluster

pytestmark = pytest.mark.cluster


@pytest.fixture(scope="module")
def operator_args() -> tuple[str, ...]:
    return ("--stale-after-seconds=8",)


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
