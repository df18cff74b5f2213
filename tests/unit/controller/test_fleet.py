"""Fleet aggregation: what `kubectl get cbp` says about an upstream, from the sidecars' reports."""

from __future__ import annotations

from breakwater.api.report import SidecarReport, UpstreamReport
from breakwater.controller.fleet import aggregate, fleet_state, open_message, summary_word
from breakwater.controller.state import EventThrottle

POLICY = "shop/payments"


def report(
    pod: str, state: str, *, mode: str = "Enforce", rate: float | None = None, calls: int = 0
) -> SidecarReport:
    upstream = UpstreamReport(
        name="payments", policy=POLICY, state=state, mode=mode, failure_rate=rate, window_calls=calls, trips=1
    )
    return SidecarReport(namespace="shop", pod=pod, upstreams=[upstream])


def test_the_fleet_state_is_the_common_state_or_mixed() -> None:
    assert fleet_state(0, 0, 0) == "Unknown"
    assert fleet_state(3, 0, 0) == "Open"
    assert fleet_state(0, 2, 0) == "HalfOpen"
    assert fleet_state(0, 0, 4) == "Closed"
    assert fleet_state(1, 0, 3) == "Mixed"


def test_counts_and_a_call_weighted_failure_rate_across_pods() -> None:
    fleet = aggregate(
        POLICY,
        "payments",
        [
            report("a", "Open", rate=1.0, calls=10),
            report("b", "Closed", rate=0.0, calls=30),
            report("c", "Closed"),
        ],
    )
    assert (fleet.state, fleet.open, fleet.closed, fleet.trips) == ("Mixed", 1, 2, 3)
    assert fleet.failure_rate == 0.25
    assert open_message([fleet]) == "payments open on 1/3 pods"


def test_observe_mode_reports_would_open_and_stays_closed() -> None:
    fleet = aggregate(
        POLICY, "payments", [report("a", "Open", mode="Observe"), report("b", "Closed", mode="Observe")]
    )
    assert (fleet.state, fleet.open, fleet.would_open, fleet.closed) == ("Closed", 0, 1, 2)
    assert open_message([fleet]) == "payments would be open on 1/2 pods"


def test_reports_of_another_policy_do_not_count() -> None:
    other = SidecarReport(
        namespace="shop",
        pod="x",
        upstreams=[UpstreamReport(name="payments", policy="shop/other", state="Open")],
    )
    assert aggregate(POLICY, "payments", [other]).state == "Unknown"


def test_the_summary_word_is_the_worst_state() -> None:
    closed = aggregate(POLICY, "payments", [report("a", "Closed")])
    opened = aggregate(POLICY, "payments", [report("a", "Open")])
    assert summary_word([closed, opened]) == "Open"
    assert summary_word([]) == "Unknown"


def test_events_of_a_flapping_upstream_are_capped_and_the_skipped_ones_counted() -> None:
    throttle = EventThrottle(burst=3, refill=3600)
    key = ("shop", "payments", "payments")
    verdicts = [throttle.admit(key) for _ in range(5)]
    assert [admitted for admitted, _ in verdicts] == [True, True, True, False, False]
    throttle._buckets[key] = (1.0, throttle._buckets[key][1])  # an hour later
    assert throttle.admit(key) == (True, 2)
