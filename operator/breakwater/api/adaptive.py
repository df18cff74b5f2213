"""spec.adaptive: how far the operator may tune a policy's thresholds from its upstreams' history."""

from __future__ import annotations

from typing import Annotated

from pydantic import Field

from breakwater.api import rules
from breakwater.api.base import SpecModel, section
from breakwater.api.scalars import Duration, Percent

__all__ = ["Adaptive", "AdaptiveBounds", "ConsecutiveFailuresRange", "DurationRange", "PercentRange"]


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
    """Bounds for open.duration."""

    __cel_rules__ = (rules.DURATION_RANGE_ORDER,)

    min: Duration = Duration("10s")
    """Shortest value the tuner may choose."""
    max: Duration = Duration("5m")
    """Longest value the tuner may choose."""


class AdaptiveBounds(SpecModel):
    """The ranges the tuner keeps each threshold in."""

    consecutive_failures: ConsecutiveFailuresRange = section(ConsecutiveFailuresRange)
    """Range of trip.consecutiveFailures."""
    failure_rate_percent: PercentRange = section(PercentRange)
    """Range of trip.failureRate.percent."""
    open_duration: DurationRange = section(DurationRange)
    """Range of open.duration."""


class Adaptive(SpecModel):
    """Let the operator tune the trip thresholds from each upstream's observed history.

    Tuned values stay within `bounds` and are reported in status.upstreams[].effective.
    """

    enabled: bool = False
    """Tune the thresholds (off: use the configured values as they are)."""
    bounds: AdaptiveBounds = section(AdaptiveBounds)
    """Ranges the tuned thresholds stay in."""
    history_window: Duration = Duration("1h")
    """How much history the tuner looks at."""
