"""What a breaker is told: its states, modes, window kinds and trip/open/half-open settings.

The ground floor of the house: these types are the policy API's vocabulary too (`api/spec.py` uses the
enums, `api/sidecar.py` carries `BreakerSettings` as the wire block `upstreams[].breaker`, validated by
`BreakerSettings.__post_init__`), so a threshold is one value with one name from the resource to the
engine. Nothing here has a default: every default is written once, in the `api/spec.py` models.
"""

from __future__ import annotations

import enum
import math
from dataclasses import dataclass

from breakwater.errors import InvalidInput


class State(enum.StrEnum):
    """Where a breaker stands for one upstream."""

    CLOSED = "Closed"
    OPEN = "Open"
    HALF_OPEN = "HalfOpen"


class Mode(enum.StrEnum):
    """How the breakers of a policy act.

    Enforce: trip and reject while open. Observe: the dry run; trip and count, never reject (status
    shows wouldOpen). ForceOpen: reject everything (serve the fallback). Disabled: pass everything
    through, measure nothing.
    """

    ENFORCE = "Enforce"
    OBSERVE = "Observe"
    FORCE_OPEN = "ForceOpen"
    DISABLED = "Disabled"


class WindowKind(enum.StrEnum):
    """Count: the last `size` calls. Time: the calls of the last `duration`."""

    COUNT = "Count"
    TIME = "Time"


MAX_WINDOW_SIZE = 100_000
"""The most calls a count window holds (it keeps one slot per call)."""
MAX_MINIMUM_CALLS = 100_000
MAX_CONSECUTIVE_FAILURES = 10_000
MAX_HALF_OPEN_CALLS = 1000
"""The bounds of the spec's fields (api/spec.py), checked here too: a sidecar given a config by other
means than the operator must refuse what no policy could say."""


class InvalidBreakerSettings(InvalidInput):
    """A `BreakerSettings` value the engine cannot run with (the message names the field)."""


@dataclass(frozen=True, slots=True)
class BreakerSettings:
    """When one breaker trips, how long it stays open, how it probes; ``None`` switches a rule off.

    The rate rules (failure rate, slow-call rate) are evaluated only once the window holds at least
    ``minimum_calls`` calls (for a count window, at most ``window_size`` are ever needed). Of
    ``window_size`` and ``window_seconds`` only the one of ``window_kind`` is used. The mode is not a
    setting of the trip rules: it is given to the breaker next to them.
    """

    consecutive_failures: int | None
    failure_rate_percent: float | None
    slow_call_percent: float | None
    slow_call_seconds: float | None
    minimum_calls: int
    window_kind: WindowKind
    window_size: int
    window_seconds: float
    open_seconds: float
    open_max_seconds: float
    backoff_multiplier: float
    jitter: float
    half_open_permitted_calls: int
    half_open_successes_to_close: int
    half_open_max_wait_seconds: float | None

    def __post_init__(self) -> None:
        def bad(field: str, value: object, why: str) -> InvalidBreakerSettings:
            # Named as the sidecar config (the wire) names it: that is where a user meets these.
            first, *rest = field.split("_")
            return InvalidBreakerSettings(f"{first}{''.join(w.capitalize() for w in rest)}={value!r}: {why}")

        def finite(field: str, value: float) -> None:
            if not math.isfinite(value):
                raise bad(field, value, "must be a finite number")

        if not isinstance(self.window_kind, WindowKind):
            raise bad("window_kind", self.window_kind, "must be a WindowKind")

        def at_most(field: str, value: int, bound: int) -> None:
            if value > bound:
                raise bad(field, value, f"must be <= {bound}")

        if self.consecutive_failures is not None and self.consecutive_failures < 1:
            raise bad("consecutive_failures", self.consecutive_failures, "must be >= 1, or unset")
        if self.consecutive_failures is not None:
            at_most("consecutive_failures", self.consecutive_failures, MAX_CONSECUTIVE_FAILURES)
        for name in ("failure_rate_percent", "slow_call_percent"):
            pct = getattr(self, name)
            if pct is not None and not (0.0 < pct <= 100.0):
                raise bad(name, pct, "must be in (0, 100], or unset")
        if self.slow_call_seconds is not None:
            finite("slow_call_seconds", self.slow_call_seconds)
            if self.slow_call_seconds <= 0:
                raise bad("slow_call_seconds", self.slow_call_seconds, "must be > 0")
        if self.slow_call_percent is not None and self.slow_call_seconds is None:
            raise bad("slow_call_percent", self.slow_call_percent, "needs slowCallSeconds")
        if self.minimum_calls < 1:
            raise bad("minimum_calls", self.minimum_calls, "must be >= 1")
        at_most("minimum_calls", self.minimum_calls, MAX_MINIMUM_CALLS)
        if self.window_size < 1:
            raise bad("window_size", self.window_size, "must be >= 1")
        at_most("window_size", self.window_size, MAX_WINDOW_SIZE)
        finite("window_seconds", self.window_seconds)
        if self.window_seconds <= 0:
            raise bad("window_seconds", self.window_seconds, "must be > 0")
        finite("open_seconds", self.open_seconds)
        finite("open_max_seconds", self.open_max_seconds)
        if self.open_seconds < 0:
            raise bad("open_seconds", self.open_seconds, "must be >= 0")
        if self.open_max_seconds < self.open_seconds:
            raise bad("open_max_seconds", self.open_max_seconds, "must be >= openSeconds")
        finite("backoff_multiplier", self.backoff_multiplier)
        if self.backoff_multiplier < 1.0:
            raise bad("backoff_multiplier", self.backoff_multiplier, "must be >= 1")
        if not (0.0 <= self.jitter < 1.0):
            raise bad("jitter", self.jitter, "must be in [0, 1)")
        if self.half_open_permitted_calls < 1:
            raise bad("half_open_permitted_calls", self.half_open_permitted_calls, "must be >= 1")
        at_most("half_open_permitted_calls", self.half_open_permitted_calls, MAX_HALF_OPEN_CALLS)
        if self.half_open_successes_to_close < 1:
            raise bad("half_open_successes_to_close", self.half_open_successes_to_close, "must be >= 1")
        at_most("half_open_successes_to_close", self.half_open_successes_to_close, MAX_HALF_OPEN_CALLS)
        if self.half_open_max_wait_seconds is not None:
            finite("half_open_max_wait_seconds", self.half_open_max_wait_seconds)
            if self.half_open_max_wait_seconds <= 0:
                raise bad("half_open_max_wait_seconds", self.half_open_max_wait_seconds, "must be > 0")

    def same_window(self, other: BreakerSettings) -> bool:
        """Whether `other` keeps the same window shape (so its recorded calls can be kept)."""
        if self.window_kind is not other.window_kind:
            return False
        if self.window_kind is WindowKind.COUNT:
            return self.window_size == other.window_size
        return self.window_seconds == other.window_seconds
