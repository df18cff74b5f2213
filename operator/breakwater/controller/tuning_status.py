"""The status parts of tuning, quorum and overrides: sources and reasons of the effective thresholds, the
suggested ones, the override's time left and its condition. Pure functions of what they are given.
"""

from __future__ import annotations

import datetime
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from breakwater.adaptive.tuner import Track
from breakwater.api.adaptive import Threshold
from breakwater.api.constants import CONDITION_OVERRIDE_EXPIRED
from breakwater.api.durations import parse_timestamp
from breakwater.api.scalars import Duration
from breakwater.api.status import Condition, EffectiveThresholds, OverrideStatus, SuggestedThresholds
from breakwater.controller.conditions import condition

__all__ = ["OverrideView", "UpstreamExtras", "override_view", "suggested", "with_sources"]

FIELD = {
    Threshold.CONSECUTIVE_FAILURES: "consecutiveFailures",
    Threshold.FAILURE_RATE_PERCENT: "failureRatePercent",
    Threshold.SLOW_CALL_DURATION: "slowerThan",
    Threshold.OPEN_DURATION: "openDuration",
    Threshold.OPEN_MAX_DURATION: "openMaxDuration",
    Threshold.SUCCESSES_TO_CLOSE: "successesToClose",
}
ADAPTIVE, CONFIGURED = "Adaptive", "Configured"


@dataclass(frozen=True)
class UpstreamExtras:
    """What the status of one upstream shows beyond the fleet's figures."""

    tracks: Mapping[Threshold, Track] = field(default_factory=dict)
    delivers: bool = False
    quorum: str | None = None


def _reason(tracks: Mapping[Threshold, Track]) -> str | None:
    reasons = [t.reason for t in tracks.values() if t.reason]
    return "; ".join(dict.fromkeys(reasons)) or None


def with_sources(effective: EffectiveThresholds, extras: UpstreamExtras) -> EffectiveThresholds:
    """The thresholds in force, each marked Configured or Adaptive, with the tuner's reason."""
    if not extras.tracks:
        return effective
    source = {
        FIELD[th]: ADAPTIVE if extras.delivers and track.tuned else CONFIGURED
        for th, track in extras.tracks.items()
    }
    return effective.model_copy(
        update={"source": source, "reason": _reason(extras.tracks) if extras.delivers else None}
    )


def _duration(seconds: float) -> str:
    return str(Duration.from_seconds(seconds))


def suggested(extras: UpstreamExtras) -> SuggestedThresholds | None:
    """The tuner's values while they are not delivered (tuning off, or Observe mode)."""
    if extras.delivers or not extras.tracks:
        return None
    values: dict[str, Any] = {}
    for th, track in extras.tracks.items():
        if th is Threshold.CONSECUTIVE_FAILURES:
            values["consecutive_failures"] = int(track.value)
        elif th is Threshold.FAILURE_RATE_PERCENT:
            values["failure_rate_percent"] = track.value
        elif th is Threshold.SLOW_CALL_DURATION:
            values["slower_than"] = _duration(track.value)
        elif th is Threshold.SUCCESSES_TO_CLOSE:
            values["successes_to_close"] = int(track.value)
        elif th is Threshold.OPEN_MAX_DURATION:
            values["open_max_duration"] = _duration(track.value)
        else:
            values["open_duration"] = _duration(track.value)
    return SuggestedThresholds(**values, reason=_reason(extras.tracks))


def left(seconds: float) -> str:
    """Time left in minutes (at most one status write a minute), "<2m" at the very end."""
    if seconds < 120:
        return "<2m"
    minutes = int(seconds // 60)
    return f"{minutes // 60}h{minutes % 60}m" if minutes >= 60 else f"{minutes}m"


@dataclass(frozen=True)
class OverrideView:
    status: OverrideStatus | None = None
    condition: Condition | None = None
    mode: str | None = None  # the MODE column


def override_view(
    spec: Mapping[str, Any], *, now: datetime.datetime, expired_when_applied: bool
) -> OverrideView:
    """spec.override as the status shows it (the spec was validated when it was rendered)."""
    override = spec.get("override")
    mode = str(spec.get("mode") or "Enforce")
    if not override:
        return OverrideView(mode=mode)
    until = parse_timestamp(str(override["until"])) if override.get("until") else None
    active = until is None or until > now
    remaining = left((until - now).total_seconds()) if until is not None and active else None
    status = OverrideStatus(
        mode=str(override.get("mode")),
        reason=str(override.get("reason") or ""),
        until=until,
        active=active,
        remaining=remaining,
    )
    if active:
        shown = f"{status.mode} (override, {remaining} left)" if remaining else f"{status.mode} (override)"
        return OverrideView(status, condition(CONDITION_OVERRIDE_EXPIRED, False, "InForce", ""), shown)
    when = until.strftime("%Y-%m-%dT%H:%M:%SZ") if until else ""
    if expired_when_applied:
        cond = condition(
            CONDITION_OVERRIDE_EXPIRED,
            True,
            "ExpiredWhenApplied",
            f"override.until {when} had already passed when this generation was applied: the override "
            f"does nothing; set a future until or remove spec.override",
        )
    else:
        cond = condition(
            CONDITION_OVERRIDE_EXPIRED,
            True,
            "Ended",
            f"the override ({status.mode}: {status.reason}) ended at {when}; spec.mode {mode} applies. "
            "Remove spec.override to tidy up",
        )
    return OverrideView(status, cond, mode)
