"""Per-upstream counters and the transition events the proxy hands to its listeners.

Counters are plain ints on a slotted object (the hot path pays an attribute increment, not a
prometheus-client lock); `breakwater.proxy.metrics` reads them at scrape time. One `UpstreamStats`
lives as long as its upstream's name stays in the config, across reloads.
"""

from __future__ import annotations

import logging
import time
from bisect import bisect_left
from collections import deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Final

from breakwater.breaker import Transition
from breakwater.proxy.logs import TRANSITIONS_CHANNEL

transition_log = logging.getLogger(TRANSITIONS_CHANNEL)

__all__ = [
    "DURATION_BUCKETS",
    "TransitionEvent",
    "TransitionListener",
    "UpstreamStats",
    "wall_time",
]

DURATION_BUCKETS: Final = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
"""Histogram bucket bounds (seconds) of ``breakwater_upstream_request_duration_seconds``."""

_HISTORY: Final = 20


@dataclass(frozen=True, slots=True)
class TransitionEvent:
    """One breaker transition as the proxy reports it (logs, metrics, listeners).

    ``at`` is monotonic seconds (the breaker's clock); ``wall_time`` the same instant as Unix time.
    ``config_hash`` is the config that was running when it happened.
    """

    upstream: str
    policy: str
    from_state: str
    to_state: str
    reason: str
    at: float
    wall_time: float
    config_hash: str

    @classmethod
    def of(
        cls, t: Transition, *, upstream: str, policy: str, clock: Callable[[], float], config_hash: str
    ) -> TransitionEvent:
        return cls(
            upstream=upstream,
            policy=policy,
            from_state=t.from_state.value,
            to_state=t.to_state.value,
            reason=str(t.reason),
            at=t.at,
            wall_time=wall_time(t.at, clock=clock),
            config_hash=config_hash,
        )

    def to_json(self) -> dict[str, object]:
        return {
            "upstream": self.upstream,
            "policy": self.policy,
            "from": self.from_state,
            "to": self.to_state,
            "reason": self.reason,
            "at": self.wall_time,
            "configHash": self.config_hash,
        }


TransitionListener = Callable[[TransitionEvent], None]
"""Called synchronously on the event loop for each transition; must not block (schedule I/O)."""


def publish_transition(
    event: TransitionEvent, stats: UpstreamStats, listeners: Iterable[TransitionListener]
) -> None:
    """Count a transition, log it on the transitions channel and hand it to every listener."""
    stats.record_transition(event)
    transition_log.info(
        "upstream %s: %s -> %s (%s)",
        event.upstream,
        event.from_state,
        event.to_state,
        event.reason,
        extra={
            "fields": {
                "event": "transition",
                "upstream": event.upstream,
                "policy": event.policy,
                "from": event.from_state,
                "to": event.to_state,
                "reason": event.reason,
            }
        },
    )
    for listener in list(listeners):
        try:
            listener(event)
        except Exception:
            transition_log.exception("a transition listener failed")


def wall_time(monotonic_at: float, *, clock: Callable[[], float] = time.monotonic) -> float:
    """The Unix time of a past instant given on the monotonic clock."""
    return time.time() - (clock() - monotonic_at)


class UpstreamStats:
    """What happened to the requests for one upstream; requests are counted once, by final outcome."""

    __slots__ = (
        "buckets",
        "bulkhead_full",
        "client_errors",
        "duration_count",
        "duration_sum",
        "failures",
        "fallback_cached",
        "fallback_static",
        "fast_path",
        "full_path",
        "in_flight",
        "last_transitions",
        "rejected",
        "retries",
        "successes",
        "transitions",
    )

    def __init__(self) -> None:
        self.successes = 0
        self.failures = 0
        self.rejected = 0
        self.bulkhead_full = 0
        self.client_errors = 0
        self.retries = 0
        self.fallback_static = 0
        self.fallback_cached = 0
        self.in_flight = 0
        self.fast_path = 0  # requests the fast path served (proxy/fast/)
        self.full_path = 0  # requests the full path served (proxy/full/): handed over, or fast path off
        self.buckets = [0] * (len(DURATION_BUCKETS) + 1)
        self.duration_sum = 0.0
        self.duration_count = 0
        self.transitions: dict[tuple[str, str], int] = {}
        self.last_transitions: deque[TransitionEvent] = deque(maxlen=_HISTORY)

    def observe(self, seconds: float) -> None:
        """Record the duration of one upstream attempt (until its response headers, or its failure)."""
        self.buckets[bisect_left(DURATION_BUCKETS, seconds)] += 1
        self.duration_sum += seconds
        self.duration_count += 1

    def record_transition(self, event: TransitionEvent) -> None:
        key = (event.from_state, event.to_state)
        self.transitions[key] = self.transitions.get(key, 0) + 1
        self.last_transitions.append(event)

    @property
    def requests(self) -> int:
        return self.successes + self.failures + self.rejected + self.bulkhead_full + self.client_errors

    def outcomes(self) -> dict[str, int]:
        """Requests by final outcome, with the label values of ``breakwater_upstream_requests_total``."""
        return {
            "success": self.successes,
            "failure": self.failures,
            "rejected": self.rejected,
            "bulkhead_full": self.bulkhead_full,
            "client_error": self.client_errors,
        }
