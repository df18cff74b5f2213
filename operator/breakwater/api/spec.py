"""The desired state of a CircuitBreakerPolicy: which pods, which upstreams, when to trip.

Every default of the breaker's settings lives here, once: the CRD schema, the API reference, the
renderer and the engine all take theirs from these fields. Sections that are always present (``trip``,
``open``...) default to their whole default object; optional sections (``retry``, ``bulkhead``...) are
off until written. Three sections live in modules of their own: `api/selector.py` (which pods),
`api/adaptive.py` (the tuning bounds) and `api/sidecar_ports.py` (the sidecar's own ports).
"""

from __future__ import annotations

import json
from typing import Annotated, TypeVar

from pydantic import AfterValidator, Field, Strict
from pydantic_core import PydanticCustomError

from breakwater.api import rules
from breakwater.api.adaptive import (
    Adaptive,
    AdaptiveBounds,
    ConsecutiveFailuresRange,
    DurationRange,
    PercentRange,
)
from breakwater.api.base import SpecModel, section
from breakwater.api.constants import MAX_UPSTREAMS
from breakwater.api.coordination import Coordination
from breakwater.api.plain.sidecar import FallbackKind
from breakwater.api.scalars import Duration, Percent, Timestamp
from breakwater.api.selector import LabelSelector, LabelSelectorRequirement, SelectorOperator
from breakwater.api.sidecar_ports import SidecarPorts
from breakwater.breaker.settings import (
    MAX_CONSECUTIVE_FAILURES,
    MAX_HALF_OPEN_CALLS,
    MAX_MINIMUM_CALLS,
    MAX_WINDOW_SIZE,
    BreakerSettings,
    Mode,
    WindowKind,
)

__all__ = [
    "Adaptive",
    "AdaptiveBounds",
    "Bulkhead",
    "CachedFallback",
    "CircuitBreakerPolicySpec",
    "ConsecutiveFailuresRange",
    "Coordination",
    "DurationRange",
    "FailureRate",
    "Failures",
    "Fallback",
    "FallbackKind",
    "HalfOpen",
    "LabelSelector",
    "LabelSelectorRequirement",
    "Mode",
    "Open",
    "Override",
    "PercentRange",
    "Retry",
    "SelectorOperator",
    "SlowCalls",
    "StaticFallback",
    "Trip",
    "Upstream",
    "UpstreamOverrides",
    "UpstreamSettings",
    "Window",
    "WindowKind",
]


_T = TypeVar("_T")


def _no_duplicates(values: list[_T]) -> list[_T]:
    """Mirror of ``x-kubernetes-list-type: set``: the API server refuses repeated items."""
    seen: list[_T] = []
    for value in values:
        if value in seen:
            raise PydanticCustomError("duplicate", "Duplicate value: {value}", {"value": json.dumps(value)})
        seen.append(value)
    return values


_SET = {"x-kubernetes-list-type": "set"}


# --- enums -----------------------------------------------------------------------------------------


# Enum fields accept their string values from manifests, while everything else stays strict.
ModeField = Annotated[Mode, Strict(False)]
WindowKindField = Annotated[WindowKind, Strict(False)]
FallbackKindField = Annotated[FallbackKind, Strict(False)]

StatusCode = Annotated[str, Field(max_length=3, pattern=r"^([1-5][0-9][0-9]|[1-5]xx)$")]
RetryCondition = Annotated[
    str,
    Field(
        max_length=16,
        pattern=r"^([1-5][0-9][0-9]|5xx|connect-failure|reset|timeout|gateway-error|retriable-4xx)$",
    ),
]
StatusCodes = Annotated[
    list[StatusCode], Field(max_length=32, json_schema_extra=_SET), AfterValidator(_no_duplicates)
]
RetryConditions = Annotated[
    list[RetryCondition], Field(max_length=16, json_schema_extra=_SET), AfterValidator(_no_duplicates)
]

# --- breaker settings ------------------------------------------------------------------------------


class Window(SpecModel):
    """The sliding window the failure rate is computed over.

    kind Count uses `size` (a number of calls) and kind Time uses `duration`; exactly the field of the
    kind is set.
    """

    __cel_rules__ = (rules.WINDOW_COUNT_SHAPE, rules.WINDOW_TIME_SHAPE)

    kind: WindowKindField
    """Count (the last `size` calls) or Time (the calls of the last `duration`)."""
    size: Annotated[int, Field(ge=1, le=MAX_WINDOW_SIZE)] | None = None
    """For kind Count: how many of the most recent calls count."""
    duration: Duration | None = None
    """For kind Time: how far back calls count, e.g. 30s."""


class FailureRate(SpecModel):
    """Trip when at least `percent` of the calls in the window failed, once `minimumCalls` were made."""

    __cel_rules__ = (rules.MINIMUM_CALLS_WITHIN_COUNT_WINDOW,)

    percent: Percent = 50
    """Failure rate, in percent of the calls in the window, at or above which the breaker trips."""
    minimum_calls: Annotated[int, Field(ge=1, le=MAX_MINIMUM_CALLS)] = 20
    """Calls the window must hold before the rate is judged (so 1 failure of 1 call does not trip)."""
    window: Window = Field(default=Window(kind=WindowKind.TIME, duration=Duration("30s")))
    """The window the rate is computed over (default: the last 30s)."""


class SlowCalls(SpecModel):
    """Trip when at least `percent` of the calls in the failure-rate window took longer than `slowerThan`.

    Uses the window and minimumCalls of failureRate (their defaults if failureRate is unset).
    """

    percent: Percent = 80
    """Share of slow calls, in percent, at or above which the breaker trips."""
    slower_than: Duration
    """A call taking longer than this is slow (it still counts as a success unless it times out)."""


class Trip(SpecModel):
    """When a closed breaker opens.

    Any rule that fires trips it.
    """

    __cel_rules__ = (rules.TRIP_NEEDS_A_RULE,)

    consecutive_failures: Annotated[int, Field(ge=0, le=MAX_CONSECUTIVE_FAILURES)] = 5
    """Trip after this many failures in a row (the classic rule); 0 turns this rule off."""
    failure_rate: FailureRate | None = None
    """Trip on the failure rate over a sliding window (unset: off)."""
    slow_calls: SlowCalls | None = None
    """Trip on the share of slow calls (unset: off)."""


class Failures(SpecModel):
    """What counts as a failure of the upstream.

    Every other answer counts as a success.
    """

    __cel_rules__ = (rules.FAILURES_COUNT_SOMETHING,)

    status_codes: StatusCodes = ["5xx"]
    """Response statuses that are failures: exact codes ("503", "429") or classes ("5xx")."""
    timeouts: bool = True
    """A call that exceeds the timeout is a failure."""
    connect_errors: bool = True
    """A connection that cannot be established (refused, unreachable, DNS) is a failure."""
    resets: bool = True
    """A connection reset or closed before a complete response is a failure."""


class Open(SpecModel):
    """How long a tripped breaker stays open before it lets trial calls through (half-open).

    Each consecutive trip without a successful recovery multiplies the open time by
    backoffMultiplier, up to maxDuration; jitter spreads the pods' retries apart.
    """

    __cel_rules__ = (rules.OPEN_MAX_DURATION,)

    duration: Duration = Duration("60s")
    """Open time after the first trip."""
    max_duration: Duration = Duration("5m")
    """Upper bound of the open time after repeated trips."""
    backoff_multiplier: Annotated[float, Field(ge=1, le=10, allow_inf_nan=False)] = 2.0
    """Factor applied to the open time at each re-trip from half-open (1: no backoff)."""
    jitter: Annotated[float, Field(ge=0, lt=1, allow_inf_nan=False)] = 0.2
    """Random spread of the open time, as a fraction (0.2: up to 20% shorter or longer)."""


class HalfOpen(SpecModel):
    """How an open breaker probes recovery.

    A few trial calls, then closed or open again.
    """

    __cel_rules__ = (rules.HALF_OPEN_SUCCESSES,)

    permitted_calls: Annotated[int, Field(ge=1, le=MAX_HALF_OPEN_CALLS)] = 3
    """Trial calls let through while half-open; further calls are rejected until they finish."""
    successes_to_close: Annotated[int, Field(ge=1, le=MAX_HALF_OPEN_CALLS)] | None = None
    """Successful trial calls needed to close (default: permittedCalls). Any failure re-opens."""
    max_wait: Duration | None = None
    """Re-open if the trial calls have not decided within this time (unset: wait for them)."""


class StaticFallback(SpecModel):
    """A fixed response served instead of calling the upstream."""

    __cel_rules__ = (rules.STATIC_HEADER_NAMES, rules.STATIC_HEADER_VALUES)

    status: Annotated[int, Field(ge=200, le=599)]
    """HTTP status of the fallback response, e.g. 503 or 200."""
    headers: Annotated[dict[str, Annotated[str, Field(max_length=1024)]], Field(max_length=32)] | None = None
    """Response headers, e.g. Content-Type: application/json."""
    body: Annotated[str, Field(max_length=16_384)] = ""
    """Response body."""


class CachedFallback(SpecModel):
    """Serve the last good response of the same safe request (GET, HEAD) instead of failing.

    A cache miss is answered as if there were no fallback.
    """

    max_age: Duration = Duration("5m")
    """Oldest cached response that may still be served."""
    max_entries: Annotated[int, Field(ge=1, le=1_000_000)] = 1000
    """Most responses kept per upstream (least recently used evicted first)."""
    max_bytes: Annotated[int, Field(ge=1, le=1 << 30)] = 8 << 20
    """Most bytes of response bodies kept per upstream (default 8 MiB)."""


class Fallback(SpecModel):
    """What a call rejected by an open breaker (or the bulkhead) gets instead of the upstream's answer.

    With kind None the caller gets a 503. Static needs `static`; Cached may tune `cached` (its
    defaults otherwise).
    """

    __cel_rules__ = (
        rules.FALLBACK_STATIC_REQUIRED,
        rules.FALLBACK_STATIC_ONLY_WITH_STATIC,
        rules.FALLBACK_CACHED_ONLY_WITH_CACHED,
    )

    kind: FallbackKindField = FallbackKind.NONE
    """None (a 503), Static (a fixed response) or Cached (the last good response)."""
    static: StaticFallback | None = None
    """The response for kind Static."""
    cached: CachedFallback | None = None
    """Cache settings for kind Cached."""

    @property
    def cached_settings(self) -> CachedFallback:
        """`cached`, or its defaults when unset."""
        return self.cached or CachedFallback()


class Bulkhead(SpecModel):
    """Caps the calls in flight to the upstream; calls beyond the cap wait or get the fallback."""

    max_concurrent: Annotated[int, Field(ge=1, le=100_000)]
    """Most calls in flight at once, per pod."""
    max_pending: Annotated[int, Field(ge=0, le=100_000)] = 0
    """Calls that may wait for a free slot (0: reject at once)."""


class Retry(SpecModel):
    """Retries of idempotent requests (GET, HEAD, OPTIONS, PUT, DELETE), within a budget.

    A call rejected by an open breaker is never retried.
    """

    attempts: Annotated[int, Field(ge=1, le=10)] = 2
    """Total attempts, the first included (2: one retry)."""
    per_try_timeout: Duration | None = None
    """Timeout of each attempt (unset: what is left of timeout)."""
    budget_percent: Annotated[int, Field(ge=0, le=100)] = 20
    """Retries may add at most this share of the requests (so retries cannot multiply an outage)."""
    retry_on: RetryConditions = ["connect-failure", "reset", "5xx"]
    """What is retried: connect-failure, reset, timeout, 5xx, gateway-error (502-504), retriable-4xx
    (409) or an exact status such as "503"."""


class UpstreamSettings(SpecModel):
    """The protection settings of one upstream, as they apply after per-upstream overrides.

    Not a wire object of its own: `CircuitBreakerPolicySpec.settings_for` computes it.
    """

    trip: Trip = section(Trip)
    """When the breaker opens."""
    failures: Failures = section(Failures)
    """What counts as a failure."""
    timeout: Duration = Duration("2s")
    """Per-request timeout, retries included; exceeding it is a failure if failures.timeouts is set."""
    open: Open = section(Open)
    """How long the breaker stays open."""
    half_open: HalfOpen = section(HalfOpen)
    """How recovery is probed."""
    fallback: Fallback = section(Fallback)
    """What rejected calls get."""
    bulkhead: Bulkhead | None = None
    """Concurrency cap (unset: none)."""
    retry: Retry | None = None
    """Retries (unset: none)."""

    def breaker_settings(self) -> BreakerSettings:
        """The engine's settings for these sections: the one place a threshold changes its form
        (0 or unset turns a rule off as None, durations become seconds)."""
        trip, opened, half_open = self.trip, self.open, self.half_open
        rate, slow = trip.failure_rate, trip.slow_calls
        judged = rate or FailureRate()  # slowCalls uses failureRate's window and minimum, or theirs
        window = judged.window
        return BreakerSettings(
            consecutive_failures=trip.consecutive_failures or None,
            failure_rate_percent=float(rate.percent) if rate is not None else None,
            slow_call_percent=float(slow.percent) if slow is not None else None,
            slow_call_seconds=slow.slower_than.seconds if slow is not None else None,
            minimum_calls=judged.minimum_calls,
            window_kind=window.kind,
            window_size=window.size or UNUSED_WINDOW_SIZE,
            window_seconds=window.duration.seconds if window.duration is not None else UNUSED_WINDOW_SECONDS,
            open_seconds=opened.duration.seconds,
            open_max_seconds=opened.max_duration.seconds,
            backoff_multiplier=opened.backoff_multiplier,
            jitter=opened.jitter,
            half_open_permitted_calls=half_open.permitted_calls,
            half_open_successes_to_close=half_open.successes_to_close or half_open.permitted_calls,
            half_open_max_wait_seconds=half_open.max_wait.seconds if half_open.max_wait is not None else None,
        )


# The engine reads only the window dimension of its kind; the wire format (and older sidecars) still
# wants a number for the other one.
UNUSED_WINDOW_SIZE = 100
UNUSED_WINDOW_SECONDS = 30.0


class UpstreamOverrides(SpecModel):
    """Per-upstream replacements of the policy's breaker settings.

    Each section given here replaces the policy's section of the same name for this upstream as a
    whole: fields left out of it take their defaults, not the policy's values.
    """

    trip: Trip | None = None
    """Replaces spec.trip for this upstream."""
    failures: Failures | None = None
    """Replaces spec.failures for this upstream."""
    timeout: Duration | None = None
    """Replaces spec.timeout for this upstream."""
    open: Open | None = None
    """Replaces spec.open for this upstream."""
    half_open: HalfOpen | None = None
    """Replaces spec.halfOpen for this upstream."""
    fallback: Fallback | None = None
    """Replaces spec.fallback for this upstream."""
    bulkhead: Bulkhead | None = None
    """Replaces spec.bulkhead for this upstream."""
    retry: Retry | None = None
    """Replaces spec.retry for this upstream."""


class Upstream(SpecModel):
    """A service the selected pods call, and where the sidecar listens for those calls."""

    __cel_rules__ = (rules.HOST_NUMERIC_IS_IPV4,)

    name: Annotated[str, Field(min_length=1, max_length=63, pattern=r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")]
    """Short name (a DNS label): the key of this upstream in status and its label in metrics."""
    host: Annotated[
        str,
        Field(
            min_length=1,
            max_length=253,
            # DNS labels of at most 63 characters (a longer one can never resolve)
            pattern=r"^[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?([.][a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?)*$",
        ),
    ]
    """Host name (e.g. payments.shop.svc.cluster.local) or IPv4 address of the upstream, lower case."""
    port: Annotated[int, Field(ge=1, le=65535)]
    """Port of the upstream."""
    listen_port: Annotated[int, Field(ge=1024, le=65535)] | None = None
    """Local port of the sidecar for this upstream: the app calls http://127.0.0.1:<listenPort>, which
    the operator also puts in the app containers' environment as BREAKWATER_<NAME>_URL (name upper-cased,
    '-' as '_'). Required unless transparent is true; not one of the sidecar's own ports (spec.sidecar)."""
    overrides: UpstreamOverrides | None = None
    """Breaker settings for this upstream only, replacing the policy's sections."""


class Override(SpecModel):
    """Manual, time-boxed control: while set (and until `until`), `mode` replaces spec.mode.

    The operator ignores an override whose `until` has passed and reports so in status.
    """

    __cel_rules__ = (rules.OVERRIDE_UNTIL_FOR_FORCE_OPEN,)

    mode: ModeField
    """The mode to apply instead of spec.mode."""
    until: Timestamp | None = None
    """End of the override, RFC 3339 (e.g. 2030-01-01T12:00:00Z). Required for ForceOpen."""
    reason: Annotated[str, Field(min_length=1, max_length=256)]
    """Why, for the people who find the breaker forced (e.g. a ticket or incident link)."""


class _Targeting(SpecModel):
    """The first fields of the spec: what is protected and how (kept apart only for field order)."""

    selector: LabelSelector
    """The client pods, in the policy's namespace, that get the sidecar."""
    upstreams: Annotated[
        list[Upstream],
        Field(
            min_length=1,
            max_length=MAX_UPSTREAMS,
            json_schema_extra={"x-kubernetes-list-type": "map", "x-kubernetes-list-map-keys": ["name"]},
        ),
    ]
    """The services those pods call through the sidecar, each with its own breaker."""
    transparent: bool = False
    """Also route the app's plain-HTTP calls to the upstreams' host:port through the sidecar, without
    changing the app's URLs: HTTP_PROXY and http_proxy point at the sidecar's forward proxy. Calls to
    other hosts pass through unprotected; HTTPS is not affected."""
    mode: ModeField = Mode.ENFORCE
    """How this policy's breakers act."""
    override: Override | None = None
    """A time-boxed manual mode that replaces `mode` until it expires."""
    sidecar: SidecarPorts | None = None
    """The sidecar's own ports for the pods this policy injects (when several policies select a pod,
    the oldest that sets spec.sidecar decides both ports)."""


class CircuitBreakerPolicySpec(UpstreamSettings, _Targeting):
    """The desired state of a CircuitBreakerPolicy.

    The selected client pods get a sidecar proxy with one circuit breaker per upstream and per pod.
    """

    __cel_rules__ = (
        rules.UPSTREAM_NAMES_UNIQUE,
        rules.LISTEN_PORTS_UNIQUE,
        rules.LISTEN_PORT_RESERVED,
        rules.LISTEN_PORT_OR_TRANSPARENT,
        rules.TRANSPARENT_TARGETS_UNIQUE,
        rules.SLOW_CALLS_WITHIN_TIMEOUT,
        rules.PER_TRY_TIMEOUT_WITHIN_TIMEOUT,
    )

    adaptive: Adaptive = section(Adaptive)
    """Automatic tuning of the trip thresholds."""
    coordination: Coordination = section(Coordination)
    """Fleet-wide decisions: open an upstream on every pod once a quorum of pods tripped."""

    def upstream(self, name: str) -> Upstream:
        """The upstream called `name` (`KeyError` if there is none)."""
        for upstream in self.upstreams:
            if upstream.name == name:
                return upstream
        raise KeyError(name)

    def settings_for(self, name: str) -> UpstreamSettings:
        """The settings of upstream `name`: the policy's, with its overrides' sections swapped in."""
        overrides = self.upstream(name).overrides
        values = {field: getattr(self, field) for field in UpstreamSettings.model_fields}
        if overrides is not None:
            for field in UpstreamOverrides.model_fields:
                value = getattr(overrides, field)
                if value is not None:
                    values[field] = value
        return UpstreamSettings.model_construct(**values)
