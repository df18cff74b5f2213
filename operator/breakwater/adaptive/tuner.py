"""The tuner: from one upstream's history to the thresholds it should run. Pure: no I/O, no clock.

Two steps, both deterministic functions of their arguments:

1. `evidence(history, now, ...)` sums the window up: the baseline failure rate and its spread over the
   buckets without an incident, the latency p99 of the same buckets, the recent outage lengths.
   Buckets whose failure rate (all pods together) reached the trip point in force are incidents: they
   are left out of the baseline, so an outage never teaches the breaker to tolerate outages. With the
   run counts go their standard errors (`chance_runs_error`).
2. `step(state, evidence, ...)` moves each threshold towards its target (`targets`) under the safety
   rules: only a rule the spec turns on, never a pinned one, never while any pod has the upstream
   open or half-open (`frozen`), never below `minimumVolume` calls, never while the value in force
   is within the range the evidence supports (`ThresholdTarget.supported`), and only once the target has
   stayed on the same side of the value in force for `hysteresis` — at most one change per threshold
   per `hysteresis`. A tuned value is always within `adaptive.bounds` (a configured value is shown as
   configured, wherever it is).

docs/adaptive.md derives each target; the constants below are the ones it states.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field, replace
from typing import NamedTuple

from breakwater.adaptive import open_periods
from breakwater.adaptive.history import BUCKETS, History, Totals
from breakwater.adaptive.runs import MAX_RUN, beta_prior, run_chances, total_error
from breakwater.api.adaptive import Adaptive, Threshold
from breakwater.api.report import LATENCY_BOUNDS_SECONDS
from breakwater.api.scalars import Duration
from breakwater.breaker.settings import BreakerSettings

__all__ = [
    "CHANCE_RUNS_PER_DAY",
    "Change",
    "Configured",
    "Evidence",
    "ThresholdTarget",
    "Track",
    "TunerState",
    "evidence",
    "step",
    "targets",
    "tuned_settings",
]

CHANCE_RUNS_PER_DAY = 1.0
"""consecutiveFailures is chosen so that, at the failure rates the buckets saw, runs of that many
failures happen by chance less than this often per day across the whole fleet."""
CHANCE_RUNS_DEVIATIONS = 2.0
"""consecutiveFailures is kept while its value lies between the shortest run length that chance makes
less than once a day at the estimate minus and at the estimate plus this many standard errors
(`Evidence.chance_runs_error`): the evidence does not rule it out. Thin or uneven
evidence (low traffic, a failure rate that jumps) gives a wide range, plenty of calls a narrow one."""
HEALTHY_TRIAL_FAILS = 0.1
"""halfOpen.successesToClose is the most trial calls (up to the spec's value) that a healthy upstream,
at its baseline failure rate, all answers with a success at least 1 - this often: any failed trial
re-opens the breaker for a backed-off period (up to open.maxDuration), so at 10 % background failures
3 of 3 trials fail a recovered upstream 27 % of the time, 1 of 1 10 %."""
SLOW_CALL_CEILING = 0.9
"""slowerThan stays below this fraction of the upstream's timeout (a call that slow is a timeout)."""
# Smallest moves worth a change: smaller ones are noise (and each change is a config push and an Event).
MIN_PERCENT_STEP = 3.0
MIN_RELATIVE_STEP = 0.2


@dataclass(frozen=True, slots=True)
class Configured:
    """The thresholds the spec sets for one upstream (after its overrides); None: the rule is off."""

    consecutive_failures: int | None
    failure_rate_percent: float | None
    slow_call_seconds: float | None
    open_seconds: float
    open_max_seconds: float
    minimum_calls: int
    timeout_seconds: float
    successes_to_close: int = 1
    backoff_multiplier: float = 1.0

    @classmethod
    def of(cls, settings: BreakerSettings, *, timeout_seconds: float) -> Configured:
        slow = settings.slow_call_seconds if settings.slow_call_percent is not None else None
        return cls(
            consecutive_failures=settings.consecutive_failures,
            failure_rate_percent=settings.failure_rate_percent,
            slow_call_seconds=slow,
            open_seconds=settings.open_seconds,
            open_max_seconds=settings.open_max_seconds,
            minimum_calls=settings.minimum_calls,
            timeout_seconds=timeout_seconds,
            successes_to_close=settings.half_open_successes_to_close,
            backoff_multiplier=settings.backoff_multiplier,
        )

    def value(self, threshold: Threshold) -> float | None:
        if threshold is Threshold.CONSECUTIVE_FAILURES:
            return None if self.consecutive_failures is None else float(self.consecutive_failures)
        if threshold is Threshold.FAILURE_RATE_PERCENT:
            return self.failure_rate_percent
        if threshold is Threshold.SLOW_CALL_DURATION:
            return self.slow_call_seconds
        if threshold is Threshold.SUCCESSES_TO_CLOSE:
            return float(self.successes_to_close)
        if threshold is Threshold.OPEN_MAX_DURATION:
            return self.open_max_seconds
        return self.open_seconds


@dataclass(frozen=True, slots=True)
class Evidence:
    """The window, summed up."""

    window_seconds: float
    calls: int  # in buckets without an incident
    failures: int
    spread: float  # standard deviation of the true failure rate between those buckets (a fraction):
    # the call-weighted spread of their rates less the binomial noise a bucket of that size has anyway
    chance_runs: tuple[float, ...]  # per run length k = 1..: expected runs of k failures per day
    p99_seconds: float | None  # None: no latency histogram reported
    outages: tuple[float, ...]
    incidents: int  # buckets left out
    healthy_seconds: float  # the length of the buckets that count
    pods: int = 1  # reporting sidecars: each tripped pod pays for its own open periods
    chance_runs_error: tuple[float, ...] = ()  # the standard error of each of chance_runs (empty:
    # unknown, a single bucket): the sample of minutes (Newey-West) and the window's rate (delta method)

    @property
    def baseline(self) -> float:
        return self.failures / self.calls if self.calls else 0.0


def _p99(latency: list[int]) -> float | None:
    total = sum(latency)
    if total == 0:
        return None
    rank, seen = 0.99 * total, 0
    bounds = (0.0, *LATENCY_BOUNDS_SECONDS)
    for i, count in enumerate(latency):
        if count and seen + count >= rank:
            if i >= len(LATENCY_BOUNDS_SECONDS):
                return LATENCY_BOUNDS_SECONDS[-1]  # beyond the histogram: its last bound, at least
            low, high = bounds[i], bounds[i + 1]
            return low + (high - low) * (rank - seen) / count
        seen += count
    return LATENCY_BOUNDS_SECONDS[-1]


INCIDENT_PERCENT = 50.0
"""With the failure-rate rule off, a bucket whose failure rate reaches this is an incident."""


def evidence(history: History, *, now: float, trip_percent: float | None = None, pods: int = 1) -> Evidence:
    """The window ending at `now`. A bucket whose failure rate (all pods together) reached
    `trip_percent`, the failure-rate threshold in force (`INCIDENT_PERCENT` without one), is an
    incident and left out: the fleet as a whole was failing. One pod tripping by chance does not make
    an incident — leaving its bucket out would hide the very evidence that a threshold is too tight."""
    line = INCIDENT_PERCENT if trip_percent is None else trip_percent
    healthy: list[Totals] = []
    incidents = 0
    for _, bucket in history.buckets(now):
        rate = bucket.failure_rate
        if rate is not None and 100 * rate >= line:
            incidents += 1
        elif bucket.calls:
            healthy.append(bucket)
    calls = sum(b.calls for b in healthy)
    failures = sum(b.failures for b in healthy)
    spread = 0.0
    healthy_seconds = len(healthy) * history.width
    runs = [0.0] * MAX_RUN
    errors: tuple[float, ...] = ()
    if calls:
        mean = failures / calls
        observed = sum(b.calls * ((b.failures / b.calls) - mean) ** 2 for b in healthy) / calls
        sampling = len(healthy) * mean * (1 - mean) / calls  # what buckets of these sizes vary anyway
        spread = math.sqrt(max(0.0, observed - sampling))
        # Buckets this alike could all share one rate: then a spread estimated from noise would only
        # fatten the tail of long runs (the dispersion test: chi-square, mean and 2 sd of its B - 1).
        dispersion = observed * calls / (mean * (1 - mean)) if 0 < mean < 1 else 0.0
        homogeneous = dispersion <= len(healthy) - 1 + 2 * math.sqrt(2 * max(len(healthy) - 1, 1))
        prior = beta_prior(mean, 0.0 if homogeneous else spread)
        per_day = 86_400 / max(healthy_seconds, 1.0)
        per_bucket = [
            [b.calls * c * per_day for c in run_chances(b.calls, b.failures, prior)] for b in healthy
        ]
        runs = [sum(column) for column in zip(*per_bucket, strict=True)]
        if len(healthy) > 1 and prior is not None:
            # Two sources of error: which minutes the window happened to hold (the spread of the
            # buckets' counts), and how well its failures pin the rate down (the delta method on
            # (1 - p) p^k: relative error |k - p / (1 - p)| times that of p, sqrt((1 - p) / (p n))).
            # The Beta prior pulls buckets to the window's rate, so the first alone misses the second.
            rel = math.sqrt((1 - mean) / (mean * calls))
            errors = tuple(
                math.hypot(total_error(column), total * abs(k + 1 - mean / (1 - mean)) * rel)
                for k, (column, total) in enumerate(zip(zip(*per_bucket, strict=True), runs, strict=True))
            )
    latency = [0] * (len(LATENCY_BOUNDS_SECONDS) + 1)
    for b in healthy:
        for i, n in enumerate(b.latency[: len(latency)]):
            latency[i] += n
    return Evidence(
        window_seconds=history.width * BUCKETS,
        calls=calls,
        failures=failures,
        spread=spread,
        p99_seconds=_p99(latency),
        outages=history.recent_outages(),
        incidents=incidents,
        healthy_seconds=healthy_seconds,
        chance_runs=tuple(runs),
        chance_runs_error=errors,
        pods=max(1, pods),
    )


def _window(seconds: float) -> str:
    return str(Duration.from_seconds(round(seconds)))


def _clamp(value: float, low: float, high: float) -> float:
    return min(max(value, low), high)


class ThresholdTarget(NamedTuple):
    """Where a threshold should be, why, and (when the evidence says how sure it is) the range of
    values it does not contradict: a value in force within `supported` is kept."""

    value: float
    reason: str
    supported: tuple[float, float] | None = None


def _shortest_rare_run(runs: Iterable[float]) -> int:
    """The shortest run length that chance makes less than once a day (MAX_RUN when none)."""
    return next((n + 1 for n, r in enumerate(runs) if r < CHANCE_RUNS_PER_DAY), MAX_RUN)


def targets(ev: Evidence, configured: Configured, params: Adaptive) -> dict[Threshold, ThresholdTarget]:
    """Where each threshold the evidence speaks to should be, with the reason; before hysteresis."""
    bounds = params.bounds
    out: dict[Threshold, ThresholdTarget] = {}
    p = ev.baseline
    over = _window(ev.window_seconds)
    low: float
    high: float
    if configured.failure_rate_percent is not None:
        noise = p * (1 - p) / configured.minimum_calls  # one pod's window holds at least minimumCalls
        sigma = math.sqrt(ev.spread**2 + noise)
        raw = 100 * (p + params.deviations * sigma) + params.failure_rate_margin
        low, high = bounds.failure_rate_percent.min, bounds.failure_rate_percent.max
        percent = _clamp(math.ceil(raw), low, high)
        out[Threshold.FAILURE_RATE_PERCENT] = ThresholdTarget(
            percent,
            f"failure rate baseline {100 * p:.1f} % ± {100 * sigma:.1f} over {over} → trip at {percent:g} %",
        )
    if configured.consecutive_failures is not None:
        low, high = bounds.consecutive_failures.min, bounds.consecutive_failures.max
        # The shortest run that chance makes less than once a day, at each bucket's own failure rate
        # (runs come from the bad minutes: the mean rate alone would underestimate them).
        k = _clamp(_shortest_rare_run(ev.chance_runs), low, high)
        per_hour = ev.calls * 3600 / max(ev.healthy_seconds, 1.0)
        reason = (
            f"{k:g} failures in a row: at {100 * p:.1f} % failures (± {100 * ev.spread:.1f} between "
            f"buckets) and {per_hour:.0f} calls/h, a chance run less than once a day"
        )
        supported = None
        if ev.chance_runs_error:
            z = CHANCE_RUNS_DEVIATIONS
            pairs = list(zip(ev.chance_runs, ev.chance_runs_error, strict=True))
            shortest = _clamp(_shortest_rare_run(r - z * e for r, e in pairs), low, high)
            longest = _clamp(_shortest_rare_run(r + z * e for r, e in pairs), low, high)
            supported = (shortest, longest)
            if shortest < longest:
                reason += f" (the evidence supports {shortest:g} to {longest:g})"
        out[Threshold.CONSECUTIVE_FAILURES] = ThresholdTarget(k, reason, supported)
    if configured.slow_call_seconds is not None and ev.p99_seconds is not None:
        low = bounds.slow_call_duration.min.seconds
        high = min(bounds.slow_call_duration.max.seconds, SLOW_CALL_CEILING * configured.timeout_seconds)
        if low <= high:
            seconds = _clamp(round(ev.p99_seconds * params.slow_call_factor, 2), low, high)
            out[Threshold.SLOW_CALL_DURATION] = ThresholdTarget(
                seconds,
                f"latency p99 {1000 * ev.p99_seconds:.0f} ms over {over} x {params.slow_call_factor:g} → "
                f"slow above {_window(seconds) if seconds >= 1 else f'{1000 * seconds:.0f}ms'}",
            )
    if ev.calls:
        high = configured.successes_to_close
        ok = 1 - min(p, 0.999_999)
        k = high
        if p:  # the largest k with ok^k >= 1 - HEALTHY_TRIAL_FAILS (+1e-9: 0.9^1 is not below 0.9)
            k = min(high, max(1, math.floor(math.log(1 - HEALTHY_TRIAL_FAILS) / math.log(ok) + 1e-9)))
        out[Threshold.SUCCESSES_TO_CLOSE] = ThresholdTarget(
            float(k),
            f"{k} trial successes to close: at {100 * p:.1f} % failures a recovered upstream passes "
            f"{k} of {k} trials {100 * ok**k:.0f} % of the time",
        )
    if ev.outages:
        low = bounds.open_duration.min.seconds
        high = min(bounds.open_duration.max.seconds, configured.open_max_seconds)
        if low <= high:
            out.update(_open_periods(ev, configured, params, low, high))
    return out


def _open_periods(
    ev: Evidence, configured: Configured, params: Adaptive, low: float, high: float
) -> dict[Threshold, ThresholdTarget]:
    """open.duration and open.maxDuration: the pair that would have cost least on the recent outages
    (`open_periods.cheapest`)."""
    per_pod = open_periods.priced_rate(ev.calls / max(ev.healthy_seconds, 1.0) / ev.pods)
    failed = params.failed_call_cost
    best = open_periods.cheapest(
        ev.outages, low=low, high=high, calls_per_pod=per_pod, backoff=configured.backoff_multiplier,
        failed_cost=failed,
    )  # fmt: skip
    why = (
        f"the last {len(ev.outages)} outages still failed {statistics.median(ev.outages):.0f}s after the "
        f"trip (median); at {per_pod:g} calls/s per pod and a failed call worth {failed:g} rejected, "
        f"open for {_window(best.opening)} backing off up to {_window(best.ceiling)} costs least"
    )
    return {
        Threshold.OPEN_DURATION: ThresholdTarget(best.opening, why, best.openings),
        Threshold.OPEN_MAX_DURATION: ThresholdTarget(best.ceiling, why, best.ceilings),
    }


@dataclass(frozen=True, slots=True)
class Track:
    """One threshold's tuning state: the value in force and the evidence waiting to change it."""

    value: float
    changed_at: float | None = None  # when the tuner last changed it; None: the configured value
    pending: int = 0  # +1: the target has stayed above the value since `pending_since`; -1: below
    pending_since: float = 0.0
    reason: str = ""

    @property
    def tuned(self) -> bool:
        return self.changed_at is not None


@dataclass(frozen=True, slots=True)
class TunerState:
    tracks: Mapping[Threshold, Track] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class Change:
    threshold: Threshold
    before: float
    after: float
    reason: str


def _significant(threshold: Threshold, target: float, value: float) -> bool:
    if threshold in (Threshold.CONSECUTIVE_FAILURES, Threshold.SUCCESSES_TO_CLOSE):
        return abs(target - value) >= 1
    if threshold is Threshold.FAILURE_RATE_PERCENT:
        return abs(target - value) >= MIN_PERCENT_STEP
    return abs(target - value) >= MIN_RELATIVE_STEP * value


def _bounded(threshold: Threshold, value: float, params: Adaptive, configured: Configured) -> float:
    b = params.bounds
    if threshold is Threshold.CONSECUTIVE_FAILURES:
        return _clamp(value, b.consecutive_failures.min, b.consecutive_failures.max)
    if threshold is Threshold.FAILURE_RATE_PERCENT:
        return _clamp(value, b.failure_rate_percent.min, b.failure_rate_percent.max)
    if threshold is Threshold.SUCCESSES_TO_CLOSE:  # never more than the spec asks for
        return _clamp(value, 1, configured.successes_to_close)
    if threshold is Threshold.SLOW_CALL_DURATION:
        high = min(b.slow_call_duration.max.seconds, SLOW_CALL_CEILING * configured.timeout_seconds)
        return _clamp(value, b.slow_call_duration.min.seconds, max(high, b.slow_call_duration.min.seconds))
    high = min(b.open_duration.max.seconds, configured.open_max_seconds)  # open.duration and open.maxDuration
    return _clamp(value, b.open_duration.min.seconds, max(high, b.open_duration.min.seconds))


def step(
    state: TunerState,
    ev: Evidence,
    configured: Configured,
    params: Adaptive,
    *,
    now: float,
    frozen: bool,
) -> tuple[TunerState, list[Change]]:
    """The next state and the changes it makes. Pure; `now` is wall-clock seconds."""
    hysteresis = params.hysteresis.seconds
    pinned = set(params.pinned)
    wanted = targets(ev, configured, params)
    tracks: dict[Threshold, Track] = {}
    changes: list[Change] = []
    for threshold in Threshold:
        spec_value = configured.value(threshold)
        if spec_value is None:
            continue  # the rule is off: never switched on
        old = state.tracks.get(threshold)
        if threshold in pinned:
            tracks[threshold] = Track(spec_value, reason="pinned in spec.adaptive.pinned")
            continue
        if old is None or not old.tuned:
            track = Track(spec_value, pending=old.pending if old else 0,
                          pending_since=old.pending_since if old else 0.0)  # fmt: skip
        else:
            track = replace(old, value=_bounded(threshold, old.value, params, configured))
        target = wanted.get(threshold)
        if frozen:  # no change; the evidence gathered before keeps its age (incidents are left out of it)
            track = replace(track, reason="frozen: the upstream is open or half-open on some pod")
        elif ev.calls < params.minimum_volume:
            why = f"low volume: {ev.calls} calls in {_window(ev.window_seconds)} < {params.minimum_volume}"
            track = replace(track, pending=0, reason=why)
        elif target is None:
            track = replace(track, pending=0, reason=track.reason or "no evidence yet")
        elif not _significant(threshold, target.value, track.value):
            track = replace(track, pending=0, reason=target.reason)
        elif target.supported is not None and target.supported[0] <= track.value <= target.supported[1]:
            why = f"{target.reason}: {track.value:g} is within that range, kept"
            track = replace(track, pending=0, reason=why)
        else:
            direction = 1 if target.value > track.value else -1
            if track.pending != direction:
                track = replace(track, pending=direction, pending_since=now)
            track = replace(track, reason=target.reason)
            quiet = track.changed_at is None or now - track.changed_at >= hysteresis
            if track.pending == direction and now - track.pending_since >= hysteresis and quiet:
                changes.append(Change(threshold, track.value, target.value, target.reason))
                track = Track(target.value, changed_at=now, reason=target.reason)
        tracks[threshold] = track
    return TunerState(tracks), changes


def tuned_settings(settings: BreakerSettings, state: TunerState) -> BreakerSettings:
    """`settings` with the thresholds the tuner changed swapped in (the rest as configured)."""
    values: dict[str, float | int] = {}
    for threshold, track in state.tracks.items():
        if not track.tuned:
            continue
        if threshold is Threshold.CONSECUTIVE_FAILURES and settings.consecutive_failures is not None:
            values["consecutive_failures"] = int(track.value)
        elif threshold is Threshold.FAILURE_RATE_PERCENT and settings.failure_rate_percent is not None:
            values["failure_rate_percent"] = float(track.value)
        elif threshold is Threshold.SLOW_CALL_DURATION and settings.slow_call_percent is not None:
            values["slow_call_seconds"] = float(track.value)
        elif threshold is Threshold.SUCCESSES_TO_CLOSE:
            values["half_open_successes_to_close"] = min(int(track.value), settings.half_open_permitted_calls)
        elif threshold is Threshold.OPEN_DURATION:
            values["open_seconds"] = float(track.value)
        elif threshold is Threshold.OPEN_MAX_DURATION:
            values["open_max_seconds"] = min(float(track.value), settings.open_max_seconds)
    if "open_max_seconds" in values:
        # The ceiling never cuts the first period short: a pinned (or not yet moved) open.duration above
        # a tuned ceiling stays what it is, and both are within the spec's open.maxDuration.
        opening = float(values.get("open_seconds", settings.open_seconds))
        values["open_max_seconds"] = max(float(values["open_max_seconds"]), opening)
    return replace(settings, **values) if values else settings  # type: ignore[arg-type]
