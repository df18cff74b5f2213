"""The observed state of a CircuitBreakerPolicy, as the operator writes it.

These models are typed but lenient: fields unknown to this version are kept (the CRD preserves them
too), numbers and timestamps are coerced, so a newer operator's status never fails to parse.
"""

from __future__ import annotations

from datetime import datetime
from enum import StrEnum
from typing import Annotated

from pydantic import Field

from breakwater.api.base import StatusModel

__all__ = [
    "CircuitBreakerPolicyStatus",
    "Condition",
    "ConditionStatus",
    "EffectiveThresholds",
    "OverrideStatus",
    "PodCounts",
    "StatusSummary",
    "SuggestedThresholds",
    "UpstreamState",
    "UpstreamStatus",
]

Count = Annotated[int, Field(ge=0)]


class ConditionStatus(StrEnum):
    """Whether a condition holds."""

    TRUE = "True"
    FALSE = "False"
    UNKNOWN = "Unknown"


class UpstreamState(StrEnum):
    """The fleet-wide state of one upstream's breakers.

    Closed, Open or HalfOpen when every reporting pod agrees; Mixed when they differ; Unknown when no
    pod reports.
    """

    CLOSED = "Closed"
    OPEN = "Open"
    HALF_OPEN = "HalfOpen"
    MIXED = "Mixed"
    UNKNOWN = "Unknown"


class Condition(StatusModel):
    """A condition of the policy, following the Kubernetes API conventions (metav1.Condition)."""

    type: Annotated[str, Field(min_length=1, max_length=316)]
    """Accepted, Ready, Conflict, PortConflict, CircuitOpen, Degraded or OverrideExpired."""
    status: ConditionStatus
    """True, False or Unknown."""
    reason: Annotated[str, Field(max_length=1024)] = ""
    """A CamelCase word saying why (e.g. UpstreamFailing)."""
    message: Annotated[str, Field(max_length=32_768)] = ""
    """A sentence for people."""
    last_transition_time: datetime | None = None
    """When status last changed."""
    observed_generation: Annotated[int, Field(ge=0)] | None = None
    """The metadata.generation the condition was computed from."""


class PodCounts(StatusModel):
    """How many client pods the policy reaches."""

    selected: Count = 0
    """Pods matching spec.selector."""
    injected: Count = 0
    """Selected pods that carry the sidecar."""
    reporting: Count = 0
    """Injected pods whose sidecar reports the current configuration."""
    stale: Count = 0
    """Injected pods whose sidecar reports an older configuration or stopped reporting."""


class EffectiveThresholds(StatusModel):
    """The thresholds in force for an upstream (after overrides and adaptive tuning)."""

    mode: str | None = None
    """The mode in force (spec.mode, or the override's)."""
    consecutive_failures: Count | None = None
    """trip.consecutiveFailures (0: off)."""
    failure_rate_percent: Annotated[float, Field(ge=0, le=100)] | None = None
    """trip.failureRate.percent (unset: off)."""
    minimum_calls: Count | None = None
    """trip.failureRate.minimumCalls."""
    slow_call_percent: Annotated[float, Field(ge=0, le=100)] | None = None
    """trip.slowCalls.percent (unset: off)."""
    slower_than: str | None = None
    """trip.slowCalls.slowerThan."""
    timeout: str | None = None
    """timeout."""
    open_duration: str | None = None
    """open.duration."""
    open_max_duration: str | None = None
    """open.maxDuration."""
    successes_to_close: Count | None = None
    """halfOpen.successesToClose."""
    source: dict[str, str] | None = None
    """Per tuned threshold (consecutiveFailures, failureRatePercent, slowerThan, openDuration,
    openMaxDuration, successesToClose): Configured
    (the spec's value) or Adaptive (chosen by the tuner)."""
    reason: str | None = None
    """Why the tuner holds these values, e.g. "failure rate baseline 6.8 % ± 2.1 over 1h → trip at 24 %"."""


class SuggestedThresholds(StatusModel):
    """What the tuner would pick with spec.adaptive.enabled (or outside Observe mode): copy them into
    the spec (`breakwater promote`) to enforce them."""

    consecutive_failures: Count | None = None
    """trip.consecutiveFailures."""
    failure_rate_percent: Annotated[float, Field(ge=0, le=100)] | None = None
    """trip.failureRate.percent."""
    slower_than: str | None = None
    """trip.slowCalls.slowerThan."""
    open_duration: str | None = None
    """open.duration."""
    open_max_duration: str | None = None
    """open.maxDuration."""
    successes_to_close: Count | None = None
    """halfOpen.successesToClose."""
    reason: str | None = None
    """The evidence behind them."""


class OverrideStatus(StatusModel):
    """spec.override as it stands: in force or ended, and how long is left."""

    mode: str
    """The override's mode."""
    reason: str = ""
    """spec.override.reason."""
    until: datetime | None = None
    """When it ends (the sidecars end it by their own clock)."""
    active: bool = False
    """Whether it is in force now."""
    remaining: str | None = None
    """Time left, e.g. 14m (unset: no end, or ended)."""


class UpstreamStatus(StatusModel):
    """One upstream across every pod of the policy."""

    name: str
    """spec.upstreams[].name."""
    state: UpstreamState = UpstreamState.UNKNOWN
    """The state of this upstream's breakers across the reporting pods."""
    open: Count = 0
    """Pods whose breaker for this upstream is open."""
    half_open: Count = 0
    """Pods whose breaker is half-open."""
    closed: Count = 0
    """Pods whose breaker is closed."""
    would_open: Count = 0
    """In Observe mode: pods whose breaker would be open."""
    failure_rate: Annotated[float, Field(ge=0, le=1)] | None = None
    """Failure ratio over the pods' current windows (0.41 = 41%)."""
    trips: Count = 0
    """Times this upstream's breakers tripped since the policy was created, over every pod.

    Pods that restarted or went away still count, and so do the trips of Observe-mode breakers; it never
    goes down, also when the operator restarts or another replica takes over. An upstream removed from
    the spec, or a policy deleted and created again, counts from zero."""
    last_transition_time: datetime | None = None
    """When `state` last changed."""
    effective: EffectiveThresholds | None = None
    """The thresholds in force."""
    suggested: SuggestedThresholds | None = None
    """The tuner's thresholds while they are not delivered (tuning off, or Observe mode)."""
    quorum: str | None = None
    """Set while spec.coordination holds the upstream open on every pod: why."""


class StatusSummary(StatusModel):
    """One-word answers for `kubectl get cbp` (the printer columns read these)."""

    state: str | None = None
    """Worst upstream state: Open, HalfOpen, Mixed, Closed or Unknown (STATE column)."""
    open: str | None = None
    """Open breakers over all breakers reporting, e.g. 3/12 (OPEN column)."""
    pods: str | None = None
    """Injected over selected pods, e.g. 12/12 (PODS column)."""
    mode: str | None = None
    """The mode in force, with any override applied and its time left (MODE column)."""
    tuning: str | None = None
    """Adaptive tuning: On (with how many thresholds tuned), Suggesting or Off (TUNING column, -o wide)."""
    message: str | None = None
    """A short sentence, e.g. "payments open on 3/12 pods"."""


class CircuitBreakerPolicyStatus(StatusModel):
    """The observed state of a CircuitBreakerPolicy, written by the operator."""

    observed_generation: Annotated[int, Field(ge=0)] | None = None
    """The metadata.generation this status describes."""
    conditions: Annotated[
        list[Condition],
        Field(json_schema_extra={"x-kubernetes-list-type": "map", "x-kubernetes-list-map-keys": ["type"]}),
    ] = []
    """Accepted and Ready (True when all is well); Conflict, PortConflict, CircuitOpen, Degraded and
    OverrideExpired (True when something needs attention)."""
    pods: PodCounts | None = None
    """Client pods reached."""
    upstreams: Annotated[
        list[UpstreamStatus],
        Field(json_schema_extra={"x-kubernetes-list-type": "map", "x-kubernetes-list-map-keys": ["name"]}),
    ] = []
    """Per-upstream state across the fleet."""
    summary: StatusSummary | None = None
    """Printer-column strings."""
    override: OverrideStatus | None = None
    """spec.override, when set: in force or ended, time left."""

    def condition(self, type_: str) -> Condition | None:
        """The condition of that type, if present."""
        return next((c for c in self.conditions if c.type == type_), None)
