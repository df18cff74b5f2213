"""End to end: `status.upstreams[].trips` counts every trip once since the policy was created, while
sidecars restart, pods are replaced and the operator restarts; `kubectl get cbp` never shows it lower."""

from __future__ import annotations

import json
import subprocess
import threading
import time
import urllib.request

import pytest

from breakwater.testing.operator import OperatorProcess
from breakwater.testing.sidecars import SidecarFleet, SidecarProcess
from breakwater.testing.upstream import FlakyUpstream
from tests.cluster.harness import breaker_policy, call, opt_in, start_clients, upstream_status
from tests.conftest import Cluster

pytestmark = pytest.mark.cluster


@pytest.fixture(scope="module")
def operator_args() -> tuple[str, ...]:
    return ("--stale-after-seconds=8",)


def sidecar_trips(sidecar: SidecarProcess) -> int:
    """What the sidecar's own breaker counted (its /stats), over this process's life."""
    with urllib.request.urlopen(sidecar.admin_url + "/stats", timeout=2) as resp:
        return int(json.loads(resp.read())["upstreams"]["payments"]["breaker"]["trips"])


class TripsSeen:
    """`kubectl get cbp` every 0.3 s, in the background: every value of trips it showed."""

    def __init__(self, cluster: Cluster, namespace: str) -> None:
        self.command = [
            cluster.tool("kubectl"), f"--kubeconfig={cluster.kubeconfig}", "get", "cbp", "payments",
            "-n", namespace, "-o", "jsonpath={.status.upstreams[?(@.name=='payments')].trips}",
        ]  # fmt: skip
        self.values: list[int] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> TripsSeen:
        self._thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self._stop.set()
        self._thread.join()

    def _run(self) -> None:
        while not self._stop.wait(0.3):
            out = subprocess.run(self.command, capture_output=True, text=True, check=False, timeout=30)
            if out.returncode == 0 and out.stdout.strip():
                self.values.append(int(out.stdout.strip()))


def test_trips_survive_sidecar_restarts_pod_replacement_and_an_operator_restart_counting_each_once(
    cluster: Cluster,
    namespace: str,
    running_operator: OperatorProcess,
    upstream: FlakyUpstream,
    fleet: SidecarFleet,
) -> None:
    opt_in(cluster, namespace)
    cluster.apply(breaker_policy("payments", upstream.port, open_for="1s"), namespace=namespace)
    start_clients(cluster, namespace, fleet, replicas=2)
    made = 0  # trips the sidecars' breakers made, over every process that ran

    def trip(sidecar: SidecarProcess) -> None:
        nonlocal made
        before = sidecar_trips(sidecar)
        upstream.failing = True
        try:
            for _ in range(3):  # consecutiveFailures: 3
                call(sidecar.url(15001) + "/pay")
        finally:
            upstream.failing = False
        assert sidecar_trips(sidecar) == before + 1
        made += 1

    def status_trips() -> int:
        return int(upstream_status(cluster, namespace, "payments").get("trips", -1))

    def shows(expected: int, what: str, timeout: float = 15) -> None:
        cluster.wait_for(f"trips {expected} ({what})", lambda: status_trips() == expected, timeout=timeout)

    def holds(expected: int, seconds: float) -> None:
        """Several report rounds and status refreshes: the number stays."""
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            assert status_trips() == expected
            time.sleep(0.5)

    cluster.wait_for(
        "Closed", lambda: upstream_status(cluster, namespace, "payments").get("state") == "Closed", timeout=20
    )
    first, second = sorted(fleet.sidecars)
    with TripsSeen(cluster, namespace) as seen:
        for name in (first, second):
            trip(fleet.sidecars[name])
        shows(2, "one trip on each pod")

        # The first pod's sidecar restarts: its counter starts from zero, the status keeps its trip.
        fleet.restart(first)
        fleet.wait_ready()
        holds(2, 6)  # summed over live counters, this went down to 1
        trip(fleet.sidecars[first])
        shows(3, "a trip of the restarted sidecar")

        # The second pod is replaced (a Deployment's pod deleted): its trip stays.
        cluster.kubectl("delete", "pod", second, "-n", namespace, "--wait=true")

        def replaced() -> bool:
            fleet.sync()
            return len(fleet.sidecars) == 2 and second not in fleet.sidecars

        cluster.wait_for("the replacement pod's sidecar", replaced, timeout=60, interval=0.5)
        fleet.wait_ready()
        third = next(n for n in fleet.sidecars if n != first)
        holds(3, 6)
        trip(fleet.sidecars[third])
        shows(4, "a trip of the replacement pod")

        # The operator restarts: the new leader reads the written 4 as its floor. The live counters
        # (2 and 1) are part of it: not added again, and the next trip adds one.
        running_operator.stop()
        running_operator.start()
        holds(4, 10)
        trip(fleet.sidecars[first])
        shows(5, "a trip after the operator restarted")
        holds(5, 6)
    assert made == 5
    assert seen.values, "kubectl never showed trips"
    assert seen.values == sorted(seen.values), f"trips went down: {seen.values}"
    assert max(seen.values) == made, f"trips counted more often than they happened: {seen.values}"
