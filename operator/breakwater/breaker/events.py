"""The values a breaker hands out: call outcomes, transition events and snapshots."""

from __future__ import annotations

import enum
from dataclasses import dataclass

from breakwater.breaker.settings import Mode, State


class Outcome(enum.Enum):
    """How an admitted call ended, as the caller classified it.

    ``IGNORED`` (e.g. the client went away): frees a half-open permit but counts neither way.
    """

    SUCCESS = "Success"
    FAILURE = "Failure"
    IGNORED = "Ignored"


class Reason(enum.StrEnum):
    """Why a transition happened (the `Transition.reason` strings; a `Reason` is a `str`)."""

    CONSECUTIVE_FAILURES = "ConsecutiveFailures"
    FAILURE_RATE = "FailureRate"
    SLOW_CALL_RATE = "SlowCallRate"
    OPEN_TIMEOUT_ELAPSED = "OpenTimeoutElapsed"
    TRIALS_SUCCEEDED = "TrialsSucceeded"
    TRIAL_FAILED = "TrialFailed"
    TRIAL_SLOW = "TrialSlow"
    HALF_OPEN_MAX_WAIT = "HalfOpenMaxWait"
    MODE_CHANGED = "ModeChanged"


@dataclass(frozen=True, slots=True)
class Transition:
    """One state change of one breaker: the event the proxy turns into logs, metrics and reports.

    ``at`` is on the breaker's clock (monotonic seconds). Transitions noticed lazily (Open -> HalfOpen
    when the open duration elapsed, HalfOpen -> Open when the max wait elapsed) carry the time they
    logically happened, not the time they were noticed.
    """

    upstream: str
    from_state: State
    to_state: State
    reason: str
    at: float


@dataclass(frozen=True, slots=True)
class BreakerSnapshot:
    """A consistent copy of one breaker's figures, for `/stats`, metrics and reports.

    Totals (``calls`` .. ``trips``) only grow over the breaker's life. ``calls`` counts completed calls
    (successes and failures, not ignored ones); ``rejections`` counts calls refused (Enforce/ForceOpen);
    ``would_reject`` counts calls Observe mode admitted although Enforce would have refused them;
    ``trips`` counts entries into Open by a trip rule or a failed half-open (not by ForceOpen).
    Window figures describe the current sliding window (emptied whenever the breaker closes);
    the rates are ``None`` while the window is empty. Times are on the breaker's clock;
    ``open_until`` is ``None`` unless Open, and ``inf`` under ForceOpen.
    """

    name: str
    state: State
    mode: Mode
    calls: int
    failures: int
    slow_calls: int
    rejections: int
    would_reject: int
    trips: int
    consecutive_failures: int
    window_calls: int
    window_failure_rate: float | None
    window_slow_rate: float | None
    open_until: float | None
    last_transitions: tuple[Transition, ...]
    state_since: float
    # additions beyond the first published interface
    ignored: int = 0
    trials_in_flight: int = 0
    half_open_successes: int = 0
    open_streak: int = 0
