"""From a sidecar's report of one upstream to additions to that upstream's history.

The operator calls `ingest` for every report it accepts and `breakwater simulate` for every simulated
report, so the history the tuner reads is built the same way in both.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Protocol

from breakwater.adaptive.history import History, PodCounters
from breakwater.breaker.settings import State

__all__ = ["BreakerFigures", "TransitionFigures", "ingest"]

_MODE_CHANGED = "ModeChanged"


class BreakerFigures(Protocol):
    """What `ingest` reads of one breaker's report (an `api.report.UpstreamReport`)."""

    @property
    def calls(self) -> int: ...
    @property
    def failures(self) -> int: ...
    @property
    def trips(self) -> int: ...
    @property
    def latency(self) -> Sequence[int]: ...


class TransitionFigures(Protocol):
    """What `ingest` reads of one transition (an `api.report.TransitionReport`)."""

    @property
    def from_state(self) -> State: ...
    @property
    def to_state(self) -> State: ...
    @property
    def reason(self) -> str: ...
    @property
    def at(self) -> float: ...


def ingest(
    history: History,
    counters: PodCounters,
    figures: BreakerFigures,
    transitions: Iterable[TransitionFigures],
    *,
    at: float,
) -> None:
    """Add what one pod's breaker did since its previous report (`counters` remembers that report)."""
    calls, failures, trips, latency = counters.advance(
        figures.calls, figures.failures, figures.trips, figures.latency
    )
    history.add(at, calls=calls, failures=failures, trips=trips, latency=latency)
    for t in sorted(transitions, key=lambda t: t.at):
        if t.at <= counters.last_transition:
            continue  # a resent report carries transitions already counted
        counters.last_transition = t.at
        if t.reason == _MODE_CHANGED:
            counters.open_since = None  # a forced open (or its end) is not an outage
        elif t.from_state == State.CLOSED and t.to_state == State.OPEN:
            counters.open_since, counters.failed_at = t.at, None
        elif t.from_state == State.HALF_OPEN and t.to_state == State.OPEN:
            counters.failed_at = t.at  # a trial failed: still down
        elif t.to_state == State.CLOSED and counters.open_since is not None:
            # How long the upstream was seen failing: to the last failed trial, not to the close (that
            # would add the breaker's own open time, and a longer open would measure longer outages).
            last = counters.failed_at if counters.failed_at is not None else counters.open_since
            history.add_outage(last - counters.open_since, opened=counters.open_since, closed=t.at)
            counters.open_since = counters.failed_at = None
