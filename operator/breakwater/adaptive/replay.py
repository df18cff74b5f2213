"""Replay recorded calls through the real breaker engine, with static thresholds or with the tuner.

Each call is handed to the breaker of its pod at its time, on a simulated clock: rejected or admitted
as the engine decides, its recorded outcome and duration fed back. With `adaptive`, every
`report_every` seconds each pod's figures are ingested into a history exactly as the operator ingests
its sidecars' reports (`adaptive.ingest`), and the tuner's step runs on it; a change is applied to
every pod's breaker, as the operator's config push would (without the push's second of delay).

What comes out counts what a user would weigh: calls rejected that would have succeeded, failed calls
let through, trips, how long breakers stayed open, and, when the incidents are known (the benchmark
knows them), the failures let through during them and the time to the first trip. `breakwater
simulate` and bench/adaptive print these.
"""

from __future__ import annotations

import random
from bisect import bisect_left
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

from breakwater.adaptive.history import LATENCY_BINS, History, PodCounters
from breakwater.adaptive.ingest import ingest
from breakwater.adaptive.tuner import Configured, TunerState, evidence, step, tuned_settings
from breakwater.api.adaptive import Adaptive, Threshold
from breakwater.api.report import LATENCY_BOUNDS_SECONDS
from breakwater.breaker import Breaker, Outcome, Transition
from breakwater.breaker.engine import REJECTED
from breakwater.breaker.settings import BreakerSettings, State

__all__ = ["Call", "Incident", "ReplayResult", "replay"]


@dataclass(frozen=True, slots=True)
class Call:
    """One recorded call: when (seconds from the start), from which pod, how long, and whether the
    upstream's answer was a success."""

    at: float
    pod: int
    duration: float
    ok: bool


@dataclass(frozen=True, slots=True)
class Incident:
    start: float
    end: float


@dataclass
class ReplayResult:
    calls: int = 0
    rejected_healthy: int = 0
    """Rejected calls whose recorded answer was a success: the cost of a breaker that opens too soon or
    stays open too long."""
    rejected_failing: int = 0
    """Rejected calls that would have failed: what the breaker spared the upstream and the app."""
    failed_let_through: int = 0
    """Admitted calls that failed."""
    failed_in_incidents: int = 0
    """Of those, the ones during a known incident: the cost of a breaker that opens too late."""
    trips: int = 0
    open_pod_seconds: float = 0.0
    """Seconds some pod's breaker was not Closed, summed over pods."""
    time_to_open: list[float | None] = field(default_factory=list)
    """Per known incident: seconds from its start to the first trip during it (None: never)."""
    changes: list[tuple[float, Threshold, float, str]] = field(default_factory=list)
    """The tuner's changes: (time, threshold, new value, reason)."""


@dataclass
class _Pod:
    breaker: Breaker
    latency: list[int]
    transitions: list[Transition]
    counters: PodCounters
    not_closed_since: float | None = None


class _Clock:
    __slots__ = ("now",)

    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


@dataclass(frozen=True, slots=True)
class _Figures:
    calls: int
    failures: int
    trips: int
    latency: Sequence[int]


@dataclass(frozen=True, slots=True)
class _Transition:
    from_state: State
    to_state: State
    reason: str
    at: float


def replay(
    calls: Iterable[Call],
    settings: BreakerSettings,
    *,
    timeout_seconds: float,
    adaptive: Adaptive | None = None,
    incidents: Sequence[Incident] = (),
    seed: int = 0,
    report_every: float = 5.0,
    wall_start: float = 1_800_000_000.0,
) -> ReplayResult:
    """Replay `calls` (in time order) against `settings`; tune them when `adaptive` is given."""
    clock = _Clock()
    rng = random.Random(seed)
    pods: dict[int, _Pod] = {}
    result = ReplayResult(time_to_open=[None] * len(incidents))
    configured = Configured.of(settings, timeout_seconds=timeout_seconds)
    history = History.for_window(adaptive.history_window.seconds) if adaptive else None
    tuner = TunerState()
    current = settings
    next_report = report_every

    def pod_of(index: int) -> _Pod:
        pod = pods.get(index)
        if pod is None:
            transitions: list[Transition] = []
            breaker = Breaker(
                f"pod-{index}", current, clock=clock, rng=rng.random, on_transition=transitions.append
            )
            pod = pods[index] = _Pod(breaker, [0] * LATENCY_BINS, transitions, PodCounters())
        return pod

    def report(now: float) -> None:
        nonlocal tuner, current
        for pod in pods.values():
            snap = pod.breaker.snapshot()
            news = [
                _Transition(t.from_state, t.to_state, str(t.reason), wall_start + t.at)
                for t in pod.transitions
            ]
            _account(pod, result, incidents)
            if history is not None:
                figures = _Figures(snap.calls, snap.failures, snap.trips, pod.latency)
                ingest(history, pod.counters, figures, news, at=wall_start + now)
        if history is None or adaptive is None:
            return
        history.advance(wall_start + now)
        ev = evidence(
            history, now=wall_start + now, trip_percent=current.failure_rate_percent, pods=len(pods)
        )
        frozen = any(p.breaker.state is not State.CLOSED for p in pods.values())
        tuner, changes = step(tuner, ev, configured, adaptive, now=wall_start + now, frozen=frozen)
        if changes:
            current = tuned_settings(settings, tuner)
            for pod in pods.values():
                pod.breaker.reconfigure(current)
            result.changes.extend((now, c.threshold, c.after, c.reason) for c in changes)

    for call in calls:
        while call.at >= next_report:
            clock.now = next_report
            report(next_report)
            next_report += report_every
        clock.now = call.at
        pod = pod_of(call.pod)
        result.calls += 1
        token = pod.breaker.try_acquire()
        if token == REJECTED:
            if call.ok:
                result.rejected_healthy += 1
            else:
                result.rejected_failing += 1
            continue
        pod.latency[bisect_left(LATENCY_BOUNDS_SECONDS, call.duration)] += 1
        pod.breaker.on_result(token, Outcome.SUCCESS if call.ok else Outcome.FAILURE, call.duration)
        if not call.ok:
            result.failed_let_through += 1
            if any(i.start <= call.at < i.end for i in incidents):
                result.failed_in_incidents += 1
    report(clock.now)
    for pod in pods.values():
        if pod.not_closed_since is not None:
            result.open_pod_seconds += clock.now - pod.not_closed_since
        result.trips += pod.breaker.snapshot().trips
    return result


def _account(pod: _Pod, result: ReplayResult, incidents: Sequence[Incident]) -> None:
    """Fold a pod's transitions since the last report into open time and time-to-open."""
    for t in pod.transitions:
        if t.to_state is State.OPEN and t.from_state is State.CLOSED:
            for i, incident in enumerate(incidents):
                first = result.time_to_open[i]
                if incident.start <= t.at < incident.end and (first is None or t.at - incident.start < first):
                    result.time_to_open[i] = t.at - incident.start
        if t.to_state is State.CLOSED:
            if pod.not_closed_since is not None:
                result.open_pod_seconds += t.at - pod.not_closed_since
            pod.not_closed_since = None
        elif pod.not_closed_since is None:
            pod.not_closed_since = t.at
    pod.transitions.clear()
