"""End to end: `status.upstreams[].trips` counts every trip once since the policy was created, while
sidecars restart, pods are replaced and the operator restarts; `kubectl get cbp` never shows it lower."""

from __future__ import annotations

import json
import subprocess
import threading
import time
import urllib.request
from pathlib import Path

import pytest

from breakwater.testing.operator import OperatorProcess
from breakwater.testing.sidecars import SidecarFleet, SidecarProcess
from breakwater.testing.upstream import FlakyUpstream
from tests.cluster.harness import (
    breaker_policy,
    call,
    opt_in,
    scrape,
    start_clients,
    upstream_status,
    value,
)
from tests.conftest import Cluster

pytestmark = pytest.mark.cluster

LEADING = "leading: policies are reconciled"
REPORT_SECONDS = 1.0  # the sidecars' report interval here; the operator writes status every second


@pytest.fixture(scope="module")
def operator_args() -> tuple[str, ...]:
    return ("--stale-after-seconds=8",)


@pytest.fixture(scope="module")
def report_interval() -> float:
    return REPORT_SECONDS


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
        self._sample()  # the last value too: the block may end right after it appeared

    def _run(self) -> None:
        while not self._stop.wait(0.3):
            self._sample()

    def _sample(self) -> None:
        out = subprocess.run(self.command, capture_output=True, text=True, check=False, timeout=30)
        if out.returncode == 0 and out.stdout.strip():
            self.values.append(int(out.stdout.strip()))


class Trips:
    """Trips made on the sidecars, and what the policy's status says of them."""

    def __init__(self, cluster: Cluster, namespace: str, upstream: FlakyUpstream) -> None:
        self.cluster, self.namespace, self.upstream = cluster, namespace, upstream
        self.made = 0  # trips the sidecars' breakers made, over every process that ran

    def trip(self, sidecar: SidecarProcess) -> None:
        before = sidecar_trips(sidecar)
        self.upstream.failing = True
        try:
            for _ in range(3):  # consecutiveFailures: 3
                call(sidecar.url(15210) + "/pay")
        finally:
            self.upstream.failing = False
        assert sidecar_trips(sidecar) == before + 1
        self.made += 1

    def status(self) -> int:
        return int(upstream_status(self.cluster, self.namespace, "payments").get("trips", -1))

    def shows(self, expected: int, what: str, timeout: float = 15) -> None:
        self.cluster.wait_for(
            f"trips {expected} ({what})", lambda: self.status() == expected, timeout=timeout
        )

    def holds(self, expected: int, rounds: int = 3) -> None:
        """For `rounds` reports of every sidecar and as many status writes, the number stays."""
        deadline = time.monotonic() + rounds * REPORT_SECONDS
        while time.monotonic() < deadline:
            assert self.status() == expected
            time.sleep(0.5)


def relayed(operator: OperatorProcess) -> float:
    """The reports a replica that does not lead passed on to the leader (its /metrics)."""
    _, samples = scrape(f"http://127.0.0.1:{operator.metrics_port}/metrics")
    return value(samples, "breakwater_operator_reports_relayed_total")


def leads(cluster: Cluster, operator: OperatorProcess, *, before: int) -> None:
    """Until the operator's log says it took the lead once more than `before` times: a hold that
    started before the new leader writes would hold nothing."""
    cluster.wait_for(
        f"{operator.workdir.name} leading", lambda: operator.count_log(LEADING) > before, timeout=60
    )


def started(cluster: Cluster, namespace: str, upstream: FlakyUpstream, fleet: SidecarFleet) -> Trips:
    opt_in(cluster, namespace)
    cluster.apply(breaker_policy("payments", upstream.port, open_for="1s"), namespace=namespace)
    start_clients(cluster, namespace, fleet, replicas=2)
    cluster.wait_for(
        "Closed", lambda: upstream_status(cluster, namespace, "payments").get("state") == "Closed", timeout=20
    )
    return Trips(cluster, namespace, upstream)


def check(seen: TripsSeen, made: int) -> None:
    assert seen.values, "kubectl never showed trips"
    assert seen.values == sorted(seen.values), f"trips went down: {seen.values}"
    assert max(seen.values) == made, f"{made} trips made, kubectl showed: {seen.values}"


def test_trips_survive_sidecar_restarts_pod_replacement_and_an_operator_restart_counting_each_once(
    cluster: Cluster,
    namespace: str,
    running_operator: OperatorProcess,
    upstream: FlakyUpstream,
    fleet: SidecarFleet,
) -> None:
    trips = started(cluster, namespace, upstream, fleet)
    first, second = sorted(fleet.sidecars)
    with TripsSeen(cluster, namespace) as seen:
        for name in (first, second):
            trips.trip(fleet.sidecars[name])
        trips.shows(2, "one trip on each pod")

        # The first pod's sidecar restarts: its counter starts from zero, the status keeps its trip.
        fleet.restart(first)
        fleet.wait_ready()
        trips.holds(2)  # summed over live counters, this went down to 1
        trips.trip(fleet.sidecars[first])
        trips.shows(3, "a trip of the restarted sidecar")

        # The second pod is replaced (a Deployment's pod deleted): its trip stays.
        cluster.kubectl("delete", "pod", second, "-n", namespace, "--wait=true")

        def replaced() -> bool:
            fleet.sync()
            return len(fleet.sidecars) == 2 and second not in fleet.sidecars

        cluster.wait_for("the replacement pod's sidecar", replaced, timeout=60, interval=0.5)
        fleet.wait_ready()
        third = next(n for n in fleet.sidecars if n != first)
        trips.holds(3)
        trips.trip(fleet.sidecars[third])
        trips.shows(4, "a trip of the replacement pod")

        # The operator restarts: the new leader reads the written 4 as its floor. The live counters
        # (2 and 1) are part of it: not added again, and the next trip adds one.
        led = running_operator.count_log(LEADING)
        running_operator.stop()
        running_operator.start()
        leads(cluster, running_operator, before=led)
        trips.holds(4)
        trips.trip(fleet.sidecars[first])
        trips.shows(5, "a trip after the operator restarted")
        trips.holds(5)
    assert trips.made == 5
    check(seen, trips.made)


def test_another_replica_taking_over_goes_on_from_the_written_trips(
    cluster: Cluster,
    namespace: str,
    running_operator: OperatorProcess,
    upstream: FlakyUpstream,
    fleet: SidecarFleet,
    tmp_path: Path,
) -> None:
    trips = started(cluster, namespace, upstream, fleet)
    first, second = (fleet.sidecars[n] for n in sorted(fleet.sidecars))
    other = running_operator.replica(tmp_path, "other")
    with TripsSeen(cluster, namespace) as seen:
        trips.trip(first)
        trips.trip(second)
        trips.shows(2, "one trip on each pod")
        other.start()
        try:
            running_operator.stop()  # hands the Lease over
            leads(cluster, other, before=0)
            # Back as a replica that does not lead: the sidecars report to it, it relays to the leader.
            running_operator.start()
            trips.holds(2, rounds=5)
            trips.trip(first)
            trips.shows(3, "a trip counted by the new leader")
            trips.holds(3)
            assert relayed(running_operator) > 0, "the sidecars' reports did not go through it"
        finally:
            led = running_operator.count_log(LEADING)
            other.stop()  # the first one leads again: a second handover
        leads(cluster, running_operator, before=led)
        trips.holds(3)
        trips.trip(second)
        trips.shows(4, "a trip after leadership came back")
    check(seen, trips.made)
