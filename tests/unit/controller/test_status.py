"""The status a policy gets, from what the operator knows: pods, bundles and the sidecars' reports."""

from __future__ import annotations

import datetime
from typing import Any

from breakwater.api.report import SidecarReport, UpstreamReport
from breakwater.api.status import CircuitBreakerPolicyStatus
from breakwater.controller.fleet import PodReport, TransitionClock
from breakwater.controller.pods import PodFacts, facts
from breakwater.controller.state import ReconcileOutcome
from breakwater.controller.status import FleetView, desired_status, fleet_view, view_pods
from breakwater.injection.render import render_bundle
from breakwater.injection.resolve import resolve

POLICY = "shop/payments"
BODY = {
    "apiVersion": "breakwater.dev/v1alpha1",
    "kind": "CircuitBreakerPolicy",
    "metadata": {"name": "payments", "namespace": "shop", "uid": "u1", "generation": 2},
    "spec": {
        "selector": {"matchLabels": {"app": "checkout"}},
        "trip": {"consecutiveFailures": 3, "failureRate": {"percent": 40}},
        "upstreams": [{"name": "payments", "host": "payments.shop", "port": 8080, "listenPort": 15210}],
    },
}
BUNDLE = render_bundle(BODY)
ACCEPTED = ReconcileOutcome(2, True, "Rendered", "sidecar config rendered for payments")


def pod(name: str, *, injected: bool = True) -> PodFacts:
    annotations = {"breakwater.dev/injected": "true"} if injected else {}
    found = facts(
        {"metadata": {"name": name, "uid": name, "labels": {"app": "checkout"}, "annotations": annotations}}
    )
    assert found is not None
    return found


def reported(state: str, *, mode: str = "Enforce", config_hash: str | None = None) -> PodReport:
    upstream = UpstreamReport(
        name="payments", policy=POLICY, state=state, mode=mode, trips=1, window_calls=10, failure_rate=0.5
    )
    wanted = resolve({"app": "checkout"}, [BUNDLE]).config_hash if config_hash is None else config_hash
    report = SidecarReport(namespace="shop", pod="p", config_hash=wanted, upstreams=[upstream])
    return PodReport.of(report, received_at=100.0)


def status_of(
    states: dict[str, str], *, previous: dict[str, Any] | None = None, grace: bool = False, **kw: Any
) -> dict[str, Any]:
    pods = [pod(name) for name in states]
    view = view_pods(POLICY, BUNDLE, pods, lambda labels: resolve(dict(labels), [BUNDLE]))
    reports = {name: reported(state, **kw) for name, state in states.items()}
    fleet = fleet_view(
        POLICY,
        BUNDLE,
        view,
        lambda labels: resolve(dict(labels), [BUNDLE]),
        reports,
        stale_after=30,
        grace=grace,
        now=101.0,
    )
    built = desired_status(
        generation=2,
        previous=previous,
        outcome=ACCEPTED,
        bundle=BUNDLE,
        view=view,
        fleet=fleet,
        mode="Enforce",
    )
    assert isinstance(built, CircuitBreakerPolicyStatus)
    return built.to_dict()


def conditions(status: dict[str, Any]) -> dict[str, tuple[str, str]]:
    return {c["type"]: (c["status"], c["reason"]) for c in status["conditions"]}


def test_one_open_pod_of_two_makes_the_upstream_mixed_and_the_circuit_open() -> None:
    status = status_of({"a": "Open", "b": "Closed"})
    (upstream,) = status["upstreams"]
    assert (upstream["state"], upstream["open"], upstream["closed"], upstream["trips"]) == ("Mixed", 1, 1, 2)
    assert status["summary"] == {"state": "Mixed", "open": "1/2", "pods": "2/2", "mode": "Enforce",
                                 "message": "payments open on 1/2 pods"}  # fmt: skip
    assert conditions(status) == {
        "Accepted": ("True", "Rendered"),
        "Ready": ("True", "AllPodsReporting"),
        "Conflict": ("False", "NoConflict"),
        "PortConflict": ("False", "NoPortConflict"),
        "CircuitOpen": ("True", "UpstreamFailing"),
        "Degraded": ("True", "UpstreamsFailing"),
    }
    assert status["pods"] == {"selected": 2, "injected": 2, "reporting": 2, "stale": 0}
    assert all(c["observedGeneration"] == 2 for c in status["conditions"])


def test_the_thresholds_in_force_are_shown_with_rules_that_are_off_left_out() -> None:
    (upstream,) = status_of({"a": "Closed"})["upstreams"]
    assert upstream["effective"] == {
        "mode": "Enforce",
        "consecutiveFailures": 3,
        "failureRatePercent": 40.0,
        "minimumCalls": 20,
        "timeout": "2s",
        "openDuration": "1m",
        "openMaxDuration": "5m",
        "successesToClose": 3,  # halfOpen's, always on (permittedCalls by default)
    }


def test_observe_mode_reports_would_open_and_keeps_the_circuit_closed() -> None:
    status = status_of({"a": "Open"}, mode="Observe")
    (upstream,) = status["upstreams"]
    assert (upstream["state"], upstream["wouldOpen"]) == ("Closed", 1)
    assert conditions(status)["CircuitOpen"] == ("False", "WouldOpen")
    assert conditions(status)["Degraded"] == ("True", "UpstreamsFailing")


def test_a_transition_time_moves_only_when_the_status_flips() -> None:
    earlier = "2026-11-30T10:00:00Z"
    first = status_of({"a": "Closed"})
    stored = {**first, "conditions": [{**c, "lastTransitionTime": earlier} for c in first["conditions"]]}
    again = status_of({"a": "Open"}, previous=stored)
    times = {c["type"]: c["lastTransitionTime"] for c in again["conditions"]}
    assert times["Accepted"] == times["Ready"] == earlier  # unchanged
    assert times["CircuitOpen"] != earlier  # flipped to True
    assert datetime.datetime.fromisoformat(times["CircuitOpen"]) > datetime.datetime.fromisoformat(earlier)


def test_just_after_a_restart_the_written_states_are_held_until_every_pod_reports() -> None:
    written = status_of({"a": "Open", "b": "Open"})
    pods = [pod("a"), pod("b")]
    view = view_pods(POLICY, BUNDLE, pods, lambda labels: resolve(dict(labels), [BUNDLE]))
    # Only one of the two has reported since the restart, and it says Closed: nothing is invented.
    fleet = fleet_view(
        POLICY, BUNDLE, view, lambda labels: resolve(dict(labels), [BUNDLE]),
        {"a": reported("Closed")}, stale_after=30, grace=True, now=101.0,
    )  # fmt: skip
    assert fleet.hold
    held = desired_status(
        generation=2, previous=written, outcome=ACCEPTED, bundle=BUNDLE, view=view, fleet=fleet,
        clock=TransitionClock(),
    ).to_dict()  # fmt: skip
    assert held["upstreams"] == written["upstreams"]
    assert conditions(held)["CircuitOpen"] == ("True", "UpstreamFailing")


def test_a_pod_running_another_config_counts_as_stale_and_the_policy_not_ready() -> None:
    status = status_of({"a": "Closed"}, config_hash="something-older")
    assert status["pods"]["stale"] == 1
    assert conditions(status)["Ready"] == ("False", "SidecarsNotReporting")


def test_sidecars_not_heard_from_yet_are_told_apart_from_stale_ones() -> None:
    """Four pods restarted, none reported yet: '0/4 ... (0 stale or outdated)' contradicted itself."""
    pods = [pod(name) for name in ("a", "b", "c")]
    resolver = lambda labels: resolve(dict(labels), [BUNDLE])  # noqa: E731
    view = view_pods(POLICY, BUNDLE, pods, resolver)
    reports = {"a": reported("Closed"), "b": reported("Closed", config_hash="something-older")}
    fleet = fleet_view(POLICY, BUNDLE, view, resolver, reports, stale_after=30, grace=False, now=101.0)
    status = desired_status(
        generation=1, previous=None, outcome=ACCEPTED, bundle=BUNDLE, view=view, fleet=fleet
    ).to_dict()
    ready = next(c for c in status["conditions"] if c["type"] == "Ready")
    assert (
        ready["message"]
        == "1/3 sidecars report the current config (1 stale or outdated, 1 not heard from yet)"
    )
    silent = fleet_view(POLICY, BUNDLE, view, resolver, {}, stale_after=30, grace=False, now=101.0)
    status = desired_status(
        generation=1, previous=None, outcome=ACCEPTED, bundle=BUNDLE, view=view, fleet=silent
    ).to_dict()
    ready = next(c for c in status["conditions"] if c["type"] == "Ready")
    assert ready["message"] == "0/3 sidecars report the current config (3 not heard from yet)"


def test_without_reports_the_circuit_is_unknown_and_an_unreconciled_policy_pending() -> None:
    view = view_pods(POLICY, BUNDLE, [pod("a")], lambda labels: resolve(dict(labels), [BUNDLE]))
    status = desired_status(
        generation=1, previous=None, outcome=None, bundle=BUNDLE, view=view, fleet=FleetView()
    )
    found = conditions(status.to_dict())
    assert found["Accepted"] == ("Unknown", "Pending")
    assert found["CircuitOpen"] == ("Unknown", "NoReports")
