"""The policy's status, computed from what the operator knows; one function, so every writer agrees."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any, Protocol

from breakwater.api.bundle import PolicyBundle
from breakwater.api.constants import (
    CONDITION_ACCEPTED,
    CONDITION_CIRCUIT_OPEN,
    CONDITION_CONFLICT,
    CONDITION_DEGRADED,
    CONDITION_PORT_CONFLICT,
    CONDITION_READY,
    NAMESPACE_LABEL,
    SKIP_HOST_NETWORK,
    SKIP_LISTEN_PORT_CLASH,
    SKIP_MESH_PORT_CLASH,
)
from breakwater.api.scalars import Duration
from breakwater.api.sidecar import UpstreamConfig
from breakwater.api.status import (
    CircuitBreakerPolicyStatus,
    Condition,
    EffectiveThresholds,
    PodCounts,
    StatusSummary,
    UpstreamStatus,
)
from breakwater.controller.conditions import condition, merge, stored
from breakwater.controller.fleet import (
    PodReport,
    TransitionClock,
    UpstreamFleet,
    aggregate,
    open_message,
    summary_word,
)
from breakwater.controller.pods import PodFacts
from breakwater.controller.state import ReconcileOutcome
from breakwater.controller.tuning_status import OverrideView, UpstreamExtras, suggested, with_sources
from breakwater.injection.resolve import Conflict
from breakwater.injection.selectors import matches


@dataclass(frozen=True)
class PodView:
    """The policy's view of its pods: who is selected, injected, and which conflicts it loses."""

    selected: tuple[PodFacts, ...]
    injected: tuple[PodFacts, ...]
    conflicts: tuple[Conflict, ...]
    port_clashes: tuple[tuple[str, str], ...] = ()  # (pod, what collides): see port_clashes()


class ResolutionVerdict(Protocol):
    """What the status needs of a resolution (a `Resolution` or a memoized `resolutions.Verdict`)."""

    @property
    def config_hash(self) -> str: ...
    @property
    def conflicts(self) -> tuple[Conflict, ...]: ...


Resolver = Callable[[tuple[tuple[str, str], ...]], ResolutionVerdict]  # a pod's labels -> what it should run


def view_pods(
    policy: str, bundle: PolicyBundle | None, pods: Iterable[PodFacts], resolver: Resolver
) -> PodView:
    if bundle is None:
        return PodView((), (), ())
    matched: dict[tuple[tuple[str, str], ...], bool] = {}  # pods of one workload share their labels

    def selects(pod: PodFacts) -> bool:
        found = matched.get(pod.labels)
        if found is None:
            found = matched[pod.labels] = matches(bundle.selector, pod.label_map)
        return found

    selected = tuple(p for p in pods if not p.opted_out and selects(p))
    injected = tuple(p for p in selected if p.injected)
    conflicts: dict[tuple[str, str], Conflict] = {}
    seen_label_sets: set[tuple[tuple[str, str], ...]] = set()
    for pod in selected:
        if pod.labels in seen_label_sets:
            continue
        seen_label_sets.add(pod.labels)
        for conflict in resolver(pod.labels).conflicts:
            if conflict.loser == policy:
                conflicts[(conflict.upstream, conflict.winner)] = conflict
    return PodView(selected, injected, tuple(conflicts.values()), port_clashes(bundle, selected))


_PORT_SKIPS = (SKIP_LISTEN_PORT_CLASH, SKIP_MESH_PORT_CLASH)


def port_clashes(bundle: PolicyBundle, selected: Iterable[PodFacts]) -> tuple[tuple[str, str], ...]:
    """Selected pods where a listenPort collides: not injected because the app or its mesh binds the
    port (the webhook's note on the pod), or injected on sidecar ports the policy's listenPorts now
    take (a pod injected before an upgrade or a spec.sidecar change: that upstream is not served)."""
    listen = {u.listen_port: u.name for u in bundle.upstreams if u.listen_port}
    found: list[tuple[str, str]] = []
    for pod in selected:
        if not pod.injected:
            if pod.not_injected.partition(":")[0] in _PORT_SKIPS:
                found.append((pod.name, pod.not_injected))
            continue
        taken = [port for port in pod.sidecar_ports if port in listen]
        if taken:
            names = ", ".join(f"{port} ({listen[port]})" for port in taken)
            admin, proxy = pod.sidecar_ports
            found.append(
                (
                    pod.name,
                    f"its sidecar binds listenPort {names} itself (injected with ports {admin} and "
                    f"{proxy}), so that upstream is not served there: recreate the pod",
                )
            )
    return tuple(found)


# What helps a pod the webhook could not inject, by the reason it recorded on the pod.
_SKIP_HINTS = {
    SKIP_HOST_NETWORK: (
        "run it without hostNetwork, or opt it out with the annotation breakwater.dev/inject=false"
    ),
    SKIP_LISTEN_PORT_CLASH: (
        "change the upstream's listenPort (or spec.sidecar) in the policy or the app's port, then restart it"
    ),
    SKIP_MESH_PORT_CLASH: (
        "choose a listenPort (or spec.sidecar ports) outside the mesh's range, then restart it"
    ),
}


def _sample(names: list[str]) -> str:
    return ", ".join(names[:5]) + (", ..." if len(names) > 5 else "")


def not_injected_message(view: PodView) -> str:
    """Why selected pods run without the sidecar, and what helps: a restart, or a change first."""
    missing = [p for p in view.selected if not p.injected]
    parts = [f"{len(missing)} of {len(view.selected)} selected pods run without the sidecar."]
    restartable = [p.name for p in missing if not p.not_injected]
    if restartable:
        parts.append(
            f"{len(restartable)} ({_sample(restartable)}) were created before the policy or while the "
            "webhook was unavailable: restart them to inject it, e.g. "
            "`kubectl rollout restart deployment/NAME` (unless the webhook does not select this namespace: "
            f"then label it first, `kubectl label namespace NAMESPACE {NAMESPACE_LABEL}=enabled`)."
        )
    skipped: dict[str, list[str]] = {}
    for pod in missing:
        if pod.not_injected:
            skipped.setdefault(pod.not_injected, []).append(pod.name)
    for note, names in sorted(skipped.items()):
        reason = note.partition(":")[0]
        hint = _SKIP_HINTS.get(reason, "see the operator's log")
        parts.append(f"{len(names)} ({_sample(names)}) cannot carry it ({note}): {hint}.")
    return " ".join(parts)


@dataclass(frozen=True)
class FleetView:
    """What the sidecars of the policy's pods report, already aggregated."""

    upstreams: tuple[UpstreamFleet, ...] = ()
    reporting: int = 0  # injected pods reporting the config they should run
    stale: int = 0  # injected pods silent for too long, or running an older config
    hold: bool = False  # just restarted: keep the written upstream states until reports arrive


def _accepted(outcome: ReconcileOutcome | None, previous: Mapping[str, Any]) -> Condition:
    if outcome is not None:
        return condition(CONDITION_ACCEPTED, outcome.accepted, outcome.reason, outcome.message)
    return stored(previous.get("conditions"), CONDITION_ACCEPTED) or condition(
        CONDITION_ACCEPTED, None, "Pending", "not reconciled yet"
    )


def _ready(bundle: PolicyBundle | None, view: PodView, fleet: FleetView) -> Condition:
    selected, injected = len(view.selected), len(view.injected)
    if bundle is None:
        return condition(CONDITION_READY, False, "NotAccepted", "the policy has no rendered config")
    if selected == 0:
        return condition(
            CONDITION_READY, False, "NoPodsSelected", "the selector matches no running pod in this namespace"
        )
    if injected < selected:
        return condition(CONDITION_READY, False, "PodsNotInjected", not_injected_message(view))
    if fleet.reporting < injected:
        silent = injected - fleet.reporting - fleet.stale  # no report from them yet
        why = [f"{fleet.stale} stale or outdated"] if fleet.stale else []
        why += [f"{silent} not heard from yet"] if silent else []
        message = f"{fleet.reporting}/{injected} sidecars report the current config ({', '.join(why)})"
        return condition(CONDITION_READY, False, "SidecarsNotReporting", message)
    return condition(
        CONDITION_READY,
        True,
        "AllPodsReporting",
        f"{injected}/{selected} pods run and report the current config",
    )


def _conflict(view: PodView) -> Condition:
    if view.conflicts:
        message = "; ".join(c.message() for c in view.conflicts)
        return condition(CONDITION_CONFLICT, True, "UpstreamClaimedByOlderPolicy", message)
    return condition(CONDITION_CONFLICT, False, "NoConflict")


def _port_conflict(view: PodView) -> Condition:
    if not view.port_clashes:
        return condition(CONDITION_PORT_CONFLICT, False, "NoPortConflict")
    by_note: dict[str, list[str]] = {}
    for pod, note in view.port_clashes:
        by_note.setdefault(note, []).append(pod)
    message = "; ".join(
        f"{len(pods)} pod{'s' if len(pods) > 1 else ''} ({_sample(pods)}): {note}"
        for note, pods in sorted(by_note.items())
    )
    return condition(CONDITION_PORT_CONFLICT, True, "ListenPortCollides", message)


def _circuit(fleets: tuple[UpstreamFleet, ...]) -> tuple[Condition, Condition]:
    message = open_message(fleets)
    if not any(f.reporting for f in fleets):
        return (
            condition(CONDITION_CIRCUIT_OPEN, None, "NoReports", "no sidecar reports yet"),
            condition(CONDITION_DEGRADED, None, "NoReports", "no sidecar reports yet"),
        )
    enforcing_open = any((f.open or f.half_open) and not f.observe for f in fleets)
    would_open = any(f.would_open for f in fleets)
    if enforcing_open:
        circuit = condition(CONDITION_CIRCUIT_OPEN, True, "UpstreamFailing", message)
    elif would_open:
        circuit = condition(CONDITION_CIRCUIT_OPEN, False, "WouldOpen", f"Observe mode: {message}")
    else:
        circuit = condition(CONDITION_CIRCUIT_OPEN, False, "AllClosed", "every breaker is closed")
    degraded = (
        condition(CONDITION_DEGRADED, True, "UpstreamsFailing", message)
        if enforcing_open or would_open
        else condition(CONDITION_DEGRADED, False, "Healthy")
    )
    return circuit, degraded


def desired_status(
    *,
    generation: int,
    previous: Mapping[str, Any] | None,
    outcome: ReconcileOutcome | None,
    bundle: PolicyBundle | None,
    view: PodView,
    fleet: FleetView | None = None,
    clock: TransitionClock | None = None,
    mode: str | None = None,
    extras: Mapping[str, UpstreamExtras] | None = None,
    override: OverrideView | None = None,
    tuning: str | None = None,
) -> CircuitBreakerPolicyStatus:
    """The status the policy should have. `previous` is the stored status (what `kubectl` shows).

    `extras` adds the tuner's sources, reasons and suggestions and the quorum per upstream,
    `override` the override's status, condition and MODE text, `tuning` the TUNING column."""
    previous = previous or {}
    extras = extras or {}
    override = override or OverrideView()
    fleet = fleet or FleetView()
    clock = clock or TransitionClock()
    conditions = [
        _accepted(outcome, previous),
        _ready(bundle, view, fleet),
        _conflict(view),
        _port_conflict(view),
    ]
    old_upstreams = {u.get("name"): u for u in previous.get("upstreams") or ()}
    if fleet.hold and old_upstreams:
        # Just restarted and the reports are not all in: keep what is written, invent nothing.
        upstreams = [UpstreamStatus.model_validate(u) for u in previous.get("upstreams") or ()]
        for kind in (CONDITION_CIRCUIT_OPEN, CONDITION_DEGRADED):
            kept = stored(previous.get("conditions"), kind)
            if kept is not None:
                conditions.append(kept)
        summary = StatusSummary.model_validate(previous.get("summary") or {})
    else:
        fleets = fleet.upstreams
        rendered = {u.name: u for u in (bundle.upstreams if bundle else ())}
        upstreams = []
        for f in fleets:
            clock.observe(f.name, f.state, previous=old_upstreams.get(f.name))
            config = rendered.get(f.name)
            extra = extras.get(f.name, UpstreamExtras())
            effective = effective_thresholds(config) if config is not None else None
            status = f.as_status(
                last_transition_time=clock.since(f.name),
                effective=with_sources(effective, extra) if effective is not None else None,
            )
            upstreams.append(
                status.model_copy(update={"suggested": suggested(extra), "quorum": extra.quorum})
            )
        conditions.extend(_circuit(fleets))
        summary = StatusSummary(
            state=summary_word(fleets),
            open=f"{sum(f.open for f in fleets)}/{sum(f.reporting for f in fleets)}",
            message=open_message(fleets) or None,
        )
    if override.condition is not None:
        conditions.append(override.condition)
    shown = override.mode or mode
    summary = summary.model_copy(
        update={
            "pods": f"{len(view.injected)}/{len(view.selected)}",
            **({"mode": shown} if shown else {}),
            **({"tuning": tuning} if tuning else {}),
        }
    )
    return CircuitBreakerPolicyStatus(
        observed_generation=outcome.generation if outcome else previous.get("observedGeneration", 0),
        conditions=merge(previous.get("conditions"), conditions, generation=generation),
        pods=PodCounts(
            selected=len(view.selected),
            injected=len(view.injected),
            reporting=fleet.reporting,
            stale=fleet.stale,
        ),
        upstreams=upstreams,
        summary=summary,
        override=override.status,
    )


def effective_thresholds(upstream: UpstreamConfig) -> EffectiveThresholds:
    """The thresholds in force for one upstream, after overrides (and, later, adaptive tuning)."""
    breaker = upstream.breaker
    slow_percent, slow_seconds = breaker.slow_call_percent, breaker.slow_call_seconds
    slow = slow_percent is not None and slow_seconds is not None
    return EffectiveThresholds(
        mode=upstream.mode,
        consecutive_failures=breaker.consecutive_failures or 0,
        failure_rate_percent=breaker.failure_rate_percent,
        minimum_calls=breaker.minimum_calls if breaker.failure_rate_percent is not None else None,
        slow_call_percent=slow_percent if slow else None,
        slower_than=str(Duration.from_seconds(slow_seconds)) if slow and slow_seconds is not None else None,
        timeout=str(Duration.from_seconds(upstream.timeout_seconds)),
        open_duration=str(Duration.from_seconds(breaker.open_seconds)),
        open_max_duration=str(Duration.from_seconds(breaker.open_max_seconds)),
        successes_to_close=breaker.half_open_successes_to_close,
    )


def without_times(status: Mapping[str, Any]) -> dict[str, Any]:
    """The status with volatile timestamps removed, to decide whether a write is needed."""
    copy = dict(status)
    copy["conditions"] = [
        {k: v for k, v in c.items() if k != "lastTransitionTime"} for c in status.get("conditions") or ()
    ]
    return copy


def fleet_view(
    policy: str,
    bundle: PolicyBundle | None,
    view: PodView,
    resolver: Resolver,
    reports: Mapping[str, PodReport],
    *,
    stale_after: float,
    grace: bool,
    now: float | None = None,
) -> FleetView:
    """Aggregate the latest reports of the policy's injected pods.

    A pod counts as reporting when its last report is fresh and names the config hash the operator
    computes for it; as stale when it went silent or runs another config. Breaker states of every
    fresh report count, whatever config it runs: they are what the app experiences.
    """
    if bundle is None:
        return FleetView()
    now = time.monotonic() if now is None else now
    fresh, reporting, stale = [], 0, 0
    expected: dict[tuple[tuple[str, str], ...], str] = {}
    for pod in view.injected:
        got = reports.get(pod.name)
        if got is None:
            continue
        if now - got.received_at > stale_after or (got.pod_uid and got.pod_uid != pod.uid):
            stale += 1
            continue
        fresh.append(got)
        if pod.labels not in expected:
            expected[pod.labels] = resolver(pod.labels).config_hash
        if got.config_hash == expected[pod.labels]:
            reporting += 1
        else:
            stale += 1
    upstreams = tuple(aggregate(policy, u.name, fresh) for u in bundle.upstreams)
    return FleetView(
        upstreams=upstreams, reporting=reporting, stale=stale, hold=grace and len(fresh) < len(view.injected)
    )


def figures_moved(wanted: Mapping[str, Any], stored: Mapping[str, Any], *, rate_step: float = 0.05) -> bool:
    """Whether the figures alone moved enough to be worth a write: trips changed, or a failure rate
    moved by `rate_step` or more (5 points by default) or appeared or went away."""
    before = {u.get("name"): u for u in stored.get("upstreams") or ()}
    for upstream in wanted.get("upstreams") or ():
        old = before.get(upstream.get("name")) or {}
        if upstream.get("trips") != old.get("trips"):
            return True
        new_rate, old_rate = upstream.get("failureRate"), old.get("failureRate")
        if new_rate is None or old_rate is None:
            if (new_rate is None) != (old_rate is None):
                return True
        elif abs(float(new_rate) - float(old_rate)) >= rate_step - 1e-9:  # rates are rounded to 0.01
            return True
    return False


def significant(status: Mapping[str, Any]) -> dict[str, Any]:
    """The parts of a status whose change must be written at once (states, counts, conditions)."""
    copy = without_times(status)
    copy["upstreams"] = [_significant_upstream(u) for u in status.get("upstreams") or ()]
    return copy


def _significant_upstream(upstream: Mapping[str, Any]) -> dict[str, Any]:
    """An upstream's status without its figures, nor the tuner's reasons (their numbers move with every
    evaluation: they are written with the figures)."""
    copy = {k: v for k, v in upstream.items() if k not in {"failureRate", "trips", "lastTransitionTime"}}
    for part in ("effective", "suggested"):
        if isinstance(copy.get(part), dict):
            copy[part] = {k: v for k, v in copy[part].items() if k != "reason"}
    return copy
