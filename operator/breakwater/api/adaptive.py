"""spec.adaptive: how far, how fast and from how much evidence the operator tunes a policy's thresholds.

The tuner itself is `breakwater.adaptive.tuner` (pure); docs/adaptive.md explains every parameter.
"""

from __future__ import annotations

from enum import StrEnum
from typing import Annotated

from pydantic import AfterValidator, Field, Strict
from pydantic_core import PydanticCustomError

from breakwater.api import rules
from breakwater.api.base import SpecModel, section
from breakwater.api.scalars import Duration, Percent

__all__ = [
    "Adaptive",
    "AdaptiveBounds",
    "ConsecutiveFailuresRange",
    "DurationRange",
    "PercentRange",
    "SlowCallDurationRange",
    "Threshold",
]


class Threshold(StrEnum):
    """A threshold the tuner may move (and `adaptive.pinned` may exclude)."""

    CONSECUTIVE_FAILURES = "ConsecutiveFailures"
    FAILURE_RATE_PERCENT = "FailureRatePercent"
    SLOW_CALL_DURATION = "SlowCallDuration"
    OPEN_DURATION = "OpenDuration"
    SUCCESSES_TO_CLOSE = "SuccessesToClose"
    OPEN_MAX_DURATION = "OpenMaxDuration"
    """open.maxDuration, the ceiling of the backed-off open periods."""


class ConsecutiveFailuresRange(SpecModel):
    """Bounds for trip.consecutiveFailures."""

    __cel_rules__ = (rules.RANGE_ORDER,)

    min: Annotated[int, Field(ge=1, le=10_000)] = 3
    """Lowest value the tuner may choose."""
    max: Annotated[int, Field(ge=1, le=10_000)] = 20
    """Highest value the tuner may choose."""


class PercentRange(SpecModel):
    """Bounds for trip.failureRate.percent."""

    __cel_rules__ = (rules.RANGE_ORDER,)

    min: Percent = 20
    """Lowest value the tuner may choose."""
    max: Percent = 80
    """Highest value the tuner may choose."""


class DurationRange(SpecModel):
    """Bounds for open.duration and open.maxDuration (which the tuner never raises above the spec's)."""

    __cel_rules__ = (rules.DURATION_RANGE_ORDER,)

    min: Duration = Duration("10s")
    """Shortest value the tuner may choose."""
    max: Duration = Duration("5m")
    """Longest value the tuner may choose."""


class SlowCallDurationRange(SpecModel):
    """Bounds for trip.slowCalls.slowerThan (the tuner also keeps it below the upstream's timeout)."""

    __cel_rules__ = (rules.DURATION_RANGE_ORDER,)

    min: Duration = Duration("50ms")
    """Shortest value the tuner may choose."""
    max: Duration = Duration("10s")
    """Longest value the tuner may choose."""


class AdaptiveBounds(SpecModel):
    """The ranges the tuner keeps each threshold in."""

    consecutive_failures: ConsecutiveFailuresRange = section(ConsecutiveFailuresRange)
    """Range of trip.consecutiveFailures."""
    failure_rate_percent: PercentRange = section(PercentRange)
    """Range of trip.failureRate.percent."""
    open_duration: DurationRange = section(DurationRange)
    """Range of open.duration and open.maxDuration."""
    slow_call_duration: SlowCallDurationRange = section(SlowCallDurationRange)
    """Range of trip.slowCalls.slowerThan."""


def _no_duplicates(values: list[Threshold]) -> list[Threshold]:
    if len(set(values)) != len(values):
        raise PydanticCustomError("duplicate", "Duplicate value: {value}", {"value": repr(values)})
    return values


ThresholdField = Annotated[Threshold, Strict(False)]
Factor = Annotated[float, Field(ge=0.1, le=10, allow_inf_nan=False)]


class Adaptive(SpecModel):
    """Let the operator tune the trip thresholds from each upstream's observed history.

    Only the rules the policy turns on are tuned (a rule left off stays off), each within `bounds`, from
    at least `minimumVolume` calls, never while a pod has the upstream open or half-open, and at most
    once per `hysteresis`. Tuned values are reported in status.upstreams[].effective; with tuning off
    (or in Observe mode) the values it would pick are reported in status.upstreams[].suggested.
    """

    __cel_rules__ = (rules.ADAPTIVE_HYSTERESIS_WITHIN_WINDOW,)

    enabled: bool = False
    """Tune the thresholds (off: use the configured values as they are, and only suggest)."""
    bounds: AdaptiveBounds = section(AdaptiveBounds)
    """Ranges the tuned thresholds stay in."""
    history_window: Duration = Duration("1h")
    """How much history the tuner looks at (kept as 60 equal buckets)."""
    hysteresis: Duration = Duration("10m")
    """How long the evidence for a new value must persist before it is applied; also the shortest time
    between two changes of the same threshold."""
    minimum_volume: Annotated[int, Field(ge=1, le=1_000_000_000)] = 1000
    """Calls (all pods together) the history must hold before the tuner changes anything."""
    failure_rate_margin: Annotated[int, Field(ge=0, le=100)] = 10
    """Percentage points added to the baseline failure rate (plus its spread) to give the trip point."""
    deviations: Annotated[float, Field(ge=0, le=10, allow_inf_nan=False)] = 3.0
    """Standard deviations of the failure rate (between buckets, and the sampling noise of one pod's
    window) added to the baseline."""
    slow_call_factor: Factor = 2.0
    """slowerThan is the observed latency p99 times this factor."""
    failed_call_cost: Annotated[float, Field(ge=0.1, le=100, allow_inf_nan=False)] = 2.0
    """How many rejected calls one failed call let through is worth to the callers (it waits for the
    failure, up to the timeout, and loads a failing upstream; a rejection is one fast fallback).
    open.duration and open.maxDuration are chosen to cost least on the recent outages at this price."""
    pinned: Annotated[
        list[ThresholdField],
        Field(max_length=6, json_schema_extra={"x-kubernetes-list-type": "set"}),
        AfterValidator(_no_duplicates),
    ] = []
    """Thresholds the tuner never moves: ConsecutiveFailures, FailureRatePercent, SlowCallDuration,
    OpenDuration, OpenMaxDuration, SuccessesToClose."""
