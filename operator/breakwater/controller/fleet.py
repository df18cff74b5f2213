"""What the sidecars of one policy observe, summed up across the fleet.

Pure functions over the latest report of each pod: per upstream, how many pods hold the breaker
Open, HalfOpen or Closed, the fleet state (Mixed when they disagree), the failure rate over the pods'
windows, and trips. Observe-mode breakers never reject, so their Open/HalfOpen counts are reported as
`wouldOpen` and the upstream stays Closed.
"""

from __future__ import annotations

import datetime
import sys
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Protocol

from breakwater.api.report import SidecarReport
from breakwater.api.status import EffectiveThresholds, UpstreamState, UpstreamStatus
from breakwater.breaker.settings import Mode, State

# Severity order for the summary's single word: the worst state of any upstream wins.
SEVERITY = {"Open": 4, "Mixed": 3, "HalfOpen": 2, "Closed": 1, "Unknown": 0}


class BreakerReport(Protocol):
    """What the fleet view reads of one breaker's report (an `UpstreamReport` or a `BreakerState`)."""

    @property
    def name(self) -> str: ...
    @property
    def policy(self) -> str: ...
    @property
    def state(self) -> State: ...
    @property
    def mode(self) -> Mode: ...
    @property
    def trips(self) -> int: ...
    @property
    def window_calls(self) -> int: ...
    @property
    def failure_rate(self) -> float | None: ...


class HasBreakers(Protocol):
    @property
    def upstreams(self) -> Sequence[BreakerReport]: ...


@dataclass(frozen=True, slots=True)
class BreakerState:
    """One breaker of one pod, as kept between reports: only what the fleet view reads."""

    name: str
    policy: str
    state: State
    mode: Mode
    trips: int
    window_calls: int
    failure_rate: float | None


@dataclass(frozen=True, slots=True)
class PodReport:
    """The latest report of one pod, with when it arrived (operator's monotonic clock).

    Kept for every reporting pod, so it is slim: a few hundred bytes instead of the parsed report's
    few kilobytes (its figures and transitions are logged or aggregated, not kept), strings interned.
    """

    pod_uid: str
    config_hash: str
    upstreams: tuple[BreakerState, ...]
    received_at: float

    @classmethod
    def of(cls, report: SidecarReport, received_at: float) -> PodReport:
        return cls(
            pod_uid=report.pod_uid,
            config_hash=sys.intern(report.config_hash),
            upstreams=tuple(
                BreakerState(
                    name=sys.intern(u.name),
                    policy=sys.intern(u.policy),
                    state=u.state,
                    mode=u.mode,
                    trips=u.trips,
                    window_calls=u.window_calls,
                    failure_rate=u.failure_rate,
                )
                for u in report.upstreams
            ),
            received_at=received_at,
        )


@dataclass(frozen=True)
class UpstreamFleet:
    name: str
    state: str
    open: int
    half_open: int
    closed: int
    would_open: int
    failure_rate: float | None
    trips: int
    observe: bool
    tripped: int = 0  # Enforce-mode breakers open or half-open on their own (not held by a quorum)

    @property
    def reporting(self) -> int:
        return self.open + self.half_open + self.closed

    def as_status(
        self, *, last_transition_time: str | None, effective: EffectiveThresholds | None = None
    ) -> UpstreamStatus:
        return UpstreamStatus(
            name=self.name,
            state=UpstreamState(self.state),
            open=self.open,
            half_open=self.half_open,
            closed=self.closed,
            would_open=self.would_open,
            trips=self.trips,
            failure_rate=round(self.failure_rate, 2) if self.failure_rate is not None else None,
            last_transition_time=datetime.datetime.fromisoformat(last_transition_time)
            if last_transition_time
            else None,
            effective=effective,
        )


def fleet_state(open_: int, half_open: int, closed: int) -> str:
    total = open_ + half_open + closed
    if total == 0:
        return "Unknown"
    if open_ == total:
        return "Open"
    if half_open == total:
        return "HalfOpen"
    if closed == total:
        return "Closed"
    return "Mixed"


def _rate(reports: Iterable[BreakerReport]) -> float | None:
    weighted, calls = 0.0, 0
    for r in reports:
        if r.failure_rate is not None and r.window_calls:
            weighted += r.failure_rate * r.window_calls
            calls += r.window_calls
    return weighted / calls if calls else None


def aggregate(policy: str, upstream: str, reports: Iterable[HasBreakers]) -> UpstreamFleet:
    mine = [u for r in reports for u in r.upstreams if u.name == upstream and u.policy == policy]
    observe = any(u.mode == "Observe" for u in mine)
    open_ = sum(1 for u in mine if u.state == "Open")
    half = sum(1 for u in mine if u.state == "HalfOpen")
    closed = sum(1 for u in mine if u.state == "Closed")
    if observe:
        would, open_, half, closed = open_ + half, 0, 0, open_ + half + closed
    else:
        would = 0
    return UpstreamFleet(
        name=upstream,
        state=fleet_state(open_, half, closed),
        open=open_,
        half_open=half,
        closed=closed,
        would_open=would,
        failure_rate=_rate(mine),
        trips=sum(u.trips for u in mine),
        observe=observe,
        tripped=sum(1 for u in mine if u.mode == "Enforce" and u.state in ("Open", "HalfOpen")),
    )


@dataclass
class TransitionClock:
    """When each upstream's fleet state last changed, kept across status refreshes."""

    states: dict[str, tuple[str, str]] = field(default_factory=dict)  # upstream -> (state, since)

    def observe(
        self, upstream: str, state: str, *, previous: Mapping[str, object] | None
    ) -> tuple[str, str | None]:
        """Record `state`; returns (the previous state, the time it changed, or None if it did not)."""
        now = datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
        known = self.states.get(upstream)
        if known is None and previous is not None:
            # After a restart: trust the status as written, so no transition is invented.
            known = (str(previous.get("state", "Unknown")), str(previous.get("lastTransitionTime") or now))
        if known is None:
            self.states[upstream] = (state, now)
            return "Unknown", None if state == "Unknown" else now
        if known[0] == state:
            self.states[upstream] = known
            return state, None
        self.states[upstream] = (state, now)
        return known[0], now

    def since(self, upstream: str) -> str | None:
        known = self.states.get(upstream)
        return known[1] if known else None


def summary_word(fleets: Iterable[UpstreamFleet]) -> str:
    worst = "Unknown"
    for f in fleets:
        if SEVERITY[f.state] > SEVERITY[worst]:
            worst = f.state
    return worst


def open_message(fleets: Iterable[UpstreamFleet]) -> str:
    parts = []
    for f in fleets:
        if f.observe and f.would_open:
            parts.append(f"{f.name} would be open on {f.would_open}/{f.reporting} pods")
        elif f.open or f.half_open:
            detail = f"{f.name} open on {f.open}/{f.reporting} pods"
            if f.half_open:
                detail += f" (half-open on {f.half_open})"
            parts.append(detail)
    return "; ".join(parts)
