"""What the histories take from each pod's cumulative counters when pods come and go."""

from __future__ import annotations

from breakwater.api.report import SidecarReport, UpstreamReport
from breakwater.controller.adaptive import Adaptation

from .adaptive_policy import POLICY, WALL, body, calls_in


def report(pod: str, calls: int, namespace: str = "shop") -> SidecarReport:
    upstream = UpstreamReport(
        name="payments", policy=POLICY, state="Closed", calls=calls, failures=0, latency=[0] * 14
    )
    return SidecarReport(namespace=namespace, pod=pod, upstreams=[upstream])


def test_a_pod_deleted_and_created_again_under_its_name_is_a_new_pod_not_a_restart() -> None:
    a = Adaptation(api=None)
    a.configure(POLICY, body())
    a.ingest(report("checkout-1", 1_000), now=WALL)  # the first report seen: its past is not counted
    a.ingest(report("checkout-1", 1_100), now=WALL + 5)
    assert calls_in(a) == 100
    a.forget_pod("shop", "checkout-1")
    a.forget_pod("other", "checkout-1")  # another namespace's pod of that name: nothing of ours
    # The new pod's first report: its 40 calls may be a life already long, so nothing is added (a
    # sidecar that restarted, below its last counters, would add all of them)
    a.ingest(report("checkout-1", 40), now=WALL + 10)
    assert calls_in(a) == 100
    a.ingest(report("checkout-1", 70), now=WALL + 15)
    assert calls_in(a) == 130


def test_a_pod_in_another_namespace_keeps_its_counters_when_one_of_the_same_name_goes() -> None:
    a = Adaptation(api=None)
    a.configure(POLICY, body())
    a.ingest(report("checkout-1", 1_000), now=WALL)
    a.forget_pod("other", "checkout-1")
    a.ingest(report("checkout-1", 1_050), now=WALL + 5)
    assert calls_in(a) == 50
