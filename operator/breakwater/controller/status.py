"""The policy's status, computed from what the operator knows; one function, so every writer agrees."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from breakwater.api.bundle import PolicyBundle
from breakwater.api.constants import CONDITION_ACCEPTED, CONDITION_CIRCUIT_OPEN, CONDITION_READY
from breakwater.controller.conditions import Condition, merge
from breakwater.controller.pods import PodFacts
from breakwater.controller.state import ReconcileOutcome
from breakwater.injection.resolve import Conflict, resolve
from breakwater.injection.selectors import matches

CONDITION_CONFLICT = "Conflict"
CONDITION_DEGRADED = "Degraded"


@dataclass(frozen=True)
class PodView:
    """The policy's view of its pods: who is selected, injected, and which conflicts it loses."""

    selected: tuple[PodFacts, ...]
    injected: tuple[PodFacts, ...]
    conflicts: tuple[Conflict, ...]


def view_pods(
    policy: str, bundle: PolicyBundle | None, pods: Iterable[PodFacts], bundles: Mapping[str, PolicyBundle]
) -> PodView:
    if bundle is None:
        return PodView((), (), ())
    selected = tuple(p for p in pods if not p.opted_out and matches(bundle.selector, p.label_map))
    injected = tuple(p for p in selected if p.injected)
    conflicts: dict[tuple[str, str], Conflict] = {}
    seen_label_sets: set[tuple[tuple[str, str], ...]] = set()
    for pod in selected:
        if pod.labels in seen_label_sets:
            continue
        seen_label_sets.add(pod.labels)
        for conflict in resolve(pod.label_map, bundles.values()).conflicts:
            if conflict.loser == policy:
                conflicts[(conflict.upstream, conflict.winner)] = conflict
    return PodView(selected, injected, tuple(conflicts.values()))


def not_injected_message(view: PodView) -> str:
    missing = [p.name for p in view.selected if not p.injected]
    sample = ", ".join(missing[:5]) + (", ..." if len(missing) > 5 else "")
    return (
        f"{len(missing)} of {len(view.selected)} selected pods run without the sidecar ({sample}); they were "
        "created while the webhook was unavailable. Restart them to inject it, e.g. "
        "`kubectl rollout restart deployment/NAME`."
    )


def desired_status(
    *,
    generation: int,
    previous: Mapping[str, Any] | None,
    outcome: ReconcileOutcome | None,
    bundle: PolicyBundle | None,
    view: PodView,
) -> dict[str, Any]:
    previous = previous or {}
    conditions: list[Condition] = []
    if outcome is None:
        old = {c.get("type"): c for c in previous.get("conditions") or ()}.get(CONDITION_ACCEPTED)
        if old is not None:
            conditions.append(
                Condition(
                    CONDITION_ACCEPTED,
                    old.get("status") == "True",
                    old.get("reason", ""),
                    old.get("message", ""),
                )
            )
        else:
            conditions.append(Condition(CONDITION_ACCEPTED, None, "Pending", "not reconciled yet"))
    else:
        conditions.append(Condition(CONDITION_ACCEPTED, outcome.accepted, outcome.reason, outcome.message))

    selected, injected = len(view.selected), len(view.injected)
    if bundle is None:
        conditions.append(
            Condition(CONDITION_READY, False, "NotAccepted", "the policy has no rendered config")
        )
    elif selected == 0:
        conditions.append(
            Condition(
                CONDITION_READY,
                False,
                "NoPodsSelected",
                "the selector matches no running pod in this namespace",
            )
        )
    elif injected < selected:
        conditions.append(Condition(CONDITION_READY, False, "PodsNotInjected", not_injected_message(view)))
    else:
        conditions.append(
            Condition(
                CONDITION_READY,
                True,
                "AllPodsInjected",
                f"{injected}/{selected} selected pods run the sidecar",
            )
        )
    if view.conflicts:
        message = "; ".join(c.message() for c in view.conflicts)
        conditions.append(Condition(CONDITION_CONFLICT, True, "UpstreamClaimedByOlderPolicy", message))
    else:
        conditions.append(Condition(CONDITION_CONFLICT, False, "NoConflict", ""))
    conditions.append(Condition(CONDITION_CIRCUIT_OPEN, None, "NoReports", "no sidecar has reported yet"))

    upstreams = [
        {"name": u.name, "state": "Unknown", "open": 0, "halfOpen": 0, "closed": 0}
        for u in (bundle.upstreams if bundle else ())
    ]
    return {
        "observedGeneration": outcome.generation if outcome else previous.get("observedGeneration", 0),
        "conditions": merge(previous.get("conditions"), conditions, generation=generation),
        "pods": {"selected": selected, "injected": injected, "reporting": 0, "stale": 0},
        "upstreams": upstreams,
    }


def without_times(status: Mapping[str, Any]) -> dict[str, Any]:
    """The status with volatile timestamps removed, to decide whether a write is needed."""
    copy = dict(status)
    copy["conditions"] = [
        {k: v for k, v in c.items() if k != "lastTransitionTime"} for c in status.get("conditions") or ()
    ]
    return copy
