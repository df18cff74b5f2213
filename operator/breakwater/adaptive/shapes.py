"""Synthetic histories of six shapes, and the tuner run over them minute by minute.

The tests (tests/unit/adaptive) check the tuner's behaviour on each shape; hack/plot_adaptive.py draws
them for docs/adaptive.md. A shape is a list of one-minute `Minute`s, made from a seed; `run` feeds them
into a `History` one minute at a time and steps the tuner twice a minute, as the operator does every
30 s, frozen during the minutes an outage holds breakers open. The calls of a minute are the whole
fleet's: `PODS` sidecars (a tripped pod's wait costs its own share of them).
"""

from __future__ import annotations

import math
import random
from collections.abc import Callable
from dataclasses import dataclass, field

from breakwater.adaptive.history import LATENCY_BINS, History
from breakwater.adaptive.tuner import Change, Configured, TunerState, evidence, step, tuned_settings
from breakwater.api.adaptive import Adaptive, Threshold
from breakwater.api.report import LATENCY_BOUNDS_SECONDS
from breakwater.breaker.settings import BreakerSettings

__all__ = ["SHAPES", "Minute", "Run", "run"]

START = 1_800_000_000.0  # a fixed wall-clock origin: the same seed gives the same run
PODS = 10


@dataclass(frozen=True)
class Minute:
    calls: int
    failures: int
    latency: tuple[int, ...]
    open: bool = False  # breakers open or half-open during this minute (an outage)
    outage_ended: float | None = None  # an outage ended this minute, after that many seconds


def _latency(rng: random.Random, calls: int, median: float, spread: float) -> tuple[int, ...]:
    bins = [0] * LATENCY_BINS
    for _ in range(min(calls, 200)):  # a sample, scaled: enough for the quantiles
        bins[_bin(rng.lognormvariate(math.log(median), spread))] += 1
    scale = calls / max(1, min(calls, 200))
    return tuple(round(n * scale) for n in bins)


def _bin(seconds: float) -> int:
    for i, bound in enumerate(LATENCY_BOUNDS_SECONDS):
        if seconds <= bound:
            return i
    return len(LATENCY_BOUNDS_SECONDS)


def _minute(rng: random.Random, calls: int, rate: float, median: float, spread: float = 0.5) -> Minute:
    failures = sum(1 for _ in range(calls) if rng.random() < rate)
    return Minute(calls, failures, _latency(rng, calls, median, spread))


HOURS = 6


def steady(rng: random.Random) -> list[Minute]:
    """600 calls a minute, 2 % failures, latency median 80 ms."""
    return [_minute(rng, 600, 0.02, 0.08) for _ in range(HOURS * 60)]


def noisy(rng: random.Random) -> list[Minute]:
    """600 calls a minute; the failure rate jumps each minute between 0 and 12 %, latency 50-200 ms."""
    return [_minute(rng, 600, rng.uniform(0, 0.12), rng.uniform(0.05, 0.2)) for _ in range(HOURS * 60)]


def slow_drift(rng: random.Random) -> list[Minute]:
    """600 calls a minute; failures drift from 2 % to 10 % and latency from 100 ms to 600 ms."""
    n = HOURS * 60
    return [_minute(rng, 600, 0.02 + 0.08 * i / n, 0.1 + 0.5 * i / n) for i in range(n)]


def step_change(rng: random.Random) -> list[Minute]:
    """600 calls a minute; 1 % failures and 100 ms for 3 h, then 8 % and 300 ms (a new normal)."""
    n = HOURS * 60
    return [_minute(rng, 600, 0.01 if i < n // 2 else 0.08, 0.1 if i < n // 2 else 0.3) for i in range(n)]


def outage(rng: random.Random) -> list[Minute]:
    """The steady shape with two 10-minute outages (every call fails, breakers open) at 2 h and 4 h."""
    minutes = steady(rng)
    for start in (120, 240):
        for i in range(start, start + 10):
            minutes[i] = Minute(600, 600, _latency(rng, 600, 0.003, 0.2), open=True)
        minutes[start + 10] = Minute(
            minutes[start + 10].calls,
            minutes[start + 10].failures,
            minutes[start + 10].latency,
            outage_ended=600.0,
        )
    return minutes


def low_traffic(rng: random.Random) -> list[Minute]:
    """5 calls a minute (300 an hour, under the default minimumVolume of 1000), 10 % failures."""
    return [_minute(rng, 5, 0.1, 0.2, 1.0) for _ in range(HOURS * 60)]


SHAPES: dict[str, Callable[[random.Random], list[Minute]]] = {
    "steady": steady,
    "noisy": noisy,
    "slow-drift": slow_drift,
    "step-change": step_change,
    "outage": outage,
    "low-traffic": low_traffic,
}


@dataclass
class Run:
    """The tuner over a shape: the values in force after each step, and every change."""

    times: list[float] = field(default_factory=list)  # seconds from the start
    values: dict[Threshold, list[float]] = field(default_factory=dict)
    changes: list[tuple[float, Change]] = field(default_factory=list)
    frozen: list[bool] = field(default_factory=list)
    state: TunerState = field(default_factory=TunerState)


def run(minutes: list[Minute], settings: BreakerSettings, params: Adaptive, *, timeout: float = 2.0) -> Run:
    configured = Configured.of(settings, timeout_seconds=timeout)
    history = History.for_window(params.history_window.seconds)
    out = Run()
    for i, minute in enumerate(minutes):
        at = START + 60 * i
        trips = 1 if minute.open and (i == 0 or not minutes[i - 1].open) else 0
        history.add(at, calls=minute.calls, failures=minute.failures, trips=trips, latency=minute.latency)
        if minute.outage_ended is not None:
            history.add_outage(minute.outage_ended)
        for half in (30.0, 60.0):
            now = at + half
            history.advance(now)
            current = tuned_settings(settings, out.state)
            ev = evidence(history, now=now, trip_percent=current.failure_rate_percent, pods=PODS)
            out.state, made = step(out.state, ev, configured, params, now=now, frozen=minute.open)
            out.changes.extend((now - START, c) for c in made)
            out.times.append(now - START)
            out.frozen.append(minute.open)
            for threshold, track in out.state.tracks.items():
                out.values.setdefault(threshold, []).append(track.value)
    return out
