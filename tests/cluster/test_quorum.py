"""Fleet quorum end to end: real sidecar processes for kwok pods, a flaky upstream on loopback, the real
API server. A share of the pods tripping opens the upstream on every pod; the hold ends when the tripped
pods' trials close their breakers, or when none of them is left to probe."""

from __future__ import annotations

import time
from typing import Any

import pytest

from breakwater.testing.operator import OperatorProcess
from breakwater.testing.sidecars import SidecarFleet, SidecarProcess
from breakwater.testing.upstream import FlakyUpstream
from tests.cluster.adaptive_harness import breaker_of, events_of, manifest, upstream_status
from tests.cluster.harness import call, opt_in, start_clients
from tests.conftest import Cluster

pytestmark = pytest.mark.cluster


@pytest.fixture(scope="module")
def operator_args() -> tuple[str, ...]:
    return ("--stale-after-seconds=8",)


def three_pods_with_a_quorum_and_a_failing_upstream(
    cluster: Cluster, namespace: str, upstream: FlakyUpstream, fleet: SidecarFleet
) -> list[SidecarProcess]:
    """A policy with quorumPercent 50 and 3 consecutive failures to trip, 3 pods with their sidecars
    (in pod name order), and the upstream failing from now on."""
    opt_in(cluster, namespace)
    cluster.apply(
        manifest(upstream.port, trip={"consecutiveFailures": 3}, coordination={"quorumPercent": 50}),
        namespace=namespace,
    )
    start_clients(cluster, namespace, fleet, replicas=3)
    upstream.failing = True
    return sorted(fleet.sidecars.values(), key=lambda s: s.pod)


def test_a_quorum_of_tripped_pods_opens_every_sidecar_and_not_before(
    cluster: Cluster,
    namespace: str,
    running_operator: OperatorProcess,
    upstream: FlakyUpstream,
    fleet: SidecarFleet,
) -> None:
    first, second, third = three_pods_with_a_quorum_and_a_failing_upstream(
        cluster, namespace, upstream, fleet
    )
    assert [call(first.url(15210) + "/pay") for _ in range(3)] == [500, 500, 500]  # 1 of 3 trips
    cluster.wait_for(
        "one pod open on the resource",
        lambda: upstream_status(cluster, namespace).get("open") == 1,
        timeout=10,
    )
    time.sleep(3)  # well past the status loop's next pass: one pod in three is below the quorum
    assert "quorum" not in upstream_status(cluster, namespace)
    assert breaker_of(third)["state"] == "Closed"
    assert call(third.url(15210) + "/pay") == 500  # still calls the failing upstream on its own

    assert [call(second.url(15210) + "/pay") for _ in range(3)] == [500, 500, 500]  # 2 of 3: quorum
    cluster.wait_for(
        "the third sidecar held open by the quorum",
        lambda: breaker_of(third)["state"] == "Open" and breaker_of(third)["mode"] == "ForceOpen",
        timeout=15,
    )
    requests = upstream.requests
    assert call(third.url(15210) + "/pay") == 503  # rejected without calling the upstream
    assert upstream.requests == requests
    assert "2/3 pods tripped" in upstream_status(cluster, namespace)["quorum"]

    upstream.failing = False  # recovery: the pods that tripped probe, then everyone is released

    def probed_and_released() -> bool:
        for sidecar in (first, second):
            call(sidecar.url(15210) + "/pay")
        return breaker_of(third)["mode"] == "Enforce" and breaker_of(third)["state"] == "Closed"

    cluster.wait_for("the held sidecar released", probed_and_released, timeout=30, interval=1)
    assert call(third.url(15210) + "/pay") == 200


def test_a_hold_whose_tripped_pods_are_gone_releases_every_pod_and_says_none_was_left_probing(
    cluster: Cluster,
    namespace: str,
    running_operator: OperatorProcess,
    upstream: FlakyUpstream,
    fleet: SidecarFleet,
) -> None:
    # A rollout during an outage: the pods that tripped (the only ones probing) are replaced, and the
    # new pods start held. Nobody would ever probe again, so the hold ends, and the Event says why.
    first, second, third = three_pods_with_a_quorum_and_a_failing_upstream(
        cluster, namespace, upstream, fleet
    )
    for sidecar in (first, second):
        assert [call(sidecar.url(15210) + "/pay") for _ in range(3)] == [500, 500, 500]
    cluster.wait_for(
        "the third sidecar held open by the quorum",
        lambda: breaker_of(third)["mode"] == "ForceOpen",
        timeout=15,
    )
    cluster.kubectl("delete", "pod", first.pod, second.pod, "-n", namespace, "--wait=false")

    def released() -> list[dict[str, Any]]:
        fleet.sync()  # the Deployment's new pods get sidecars; the deleted ones' stop
        return [e for e in events_of(cluster, namespace, "QuorumReleased") if "left probing" in e["message"]]

    (event,) = cluster.wait_for("the hold released, none left probing", released, timeout=60, interval=1)
    assert "no pod that tripped reports any more" in event["message"]
    cluster.wait_for(
        "the held sidecar judging the upstream on its own again",
        lambda: breaker_of(third)["mode"] == "Enforce",
        timeout=15,
    )
    assert call(third.url(15210) + "/pay") == 500  # the upstream is still down: it calls it itself
