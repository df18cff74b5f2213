"""How long a tripped breaker should stay open: open.duration and open.maxDuration from the outages seen.

Pure arithmetic, no I/O. Every trial that finds the upstream still failing costs the callers a failed
call (`failed_cost` rejected calls' worth: adaptive.failedCallCost), every second a recovered upstream
waits behind an open breaker costs the calls a pod makes in a second. The engine's open periods start
at open.duration and grow by the backoff multiplier up to open.maxDuration, so a short opening and a
low ceiling fail many trials during a long outage, a long one keeps a recovered upstream waiting. The
recent outages (how long each still failed after the trip, 0 when the first trial succeeded) price
every pair of candidates; the cheapest wins.

The price of an upstream's outages is remembered (`cheapest` is memoized): the outages recorded change
only when another one ends, and the rate is priced to two significant digits (`priced_rate`), so the
tuner's evaluation of every upstream every 30 s reprices an upstream only when either moved.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Sequence
from dataclasses import dataclass

__all__ = ["CANDIDATES", "OpenPeriods", "cheapest", "cost", "priced_rate"]

CANDIDATES = (5, 10, 15, 20, 30, 45, 60, 90, 120, 180, 240, 300, 450, 600, 900, 1200, 1800, 3600)
"""The open periods (seconds) weighed, within the bounds (the bounds themselves included)."""
NEAR_BEST = 1.1
"""A value whose cost on the recent outages is within this factor (plus one failed call) of the
cheapest is kept: neighbouring values differ by less than the noise of a few outages."""
JITTER_PHASES = (0.8, 0.9, 1.0, 1.1, 1.2)
"""The engine jitters every open period by up to ±20 % (open.jitter's default): a pair's cost is its
mean over these phases, not the luck of one."""
MEMO_SIZE = 4096
"""Prices remembered: one per upstream with outages, so a fleet of 1,000 upstreams evaluated in turn
never evicts the one it needs next (~0.5 KB each)."""


def priced_rate(calls_per_pod: float) -> float:
    """The calls per second per pod the price uses: two significant digits, a step of 1-10 %, well inside
    NEAR_BEST, so that a rate that wobbles does not reprice the outages at every evaluation."""
    return float(f"{calls_per_pod:.2g}")


def cost(
    opening: float,
    ceiling: float,
    outages: Sequence[float],
    *,
    calls_per_pod: float,
    backoff: float,
    failed_cost: float,
) -> float:
    """What `outages` would have cost one tripped pod with open.duration `opening` and open.maxDuration
    `ceiling`. An outage over before the first trial (a chance trip) costs the whole first period.

    Once the periods stop growing (at the ceiling, or with no backoff) the failed trials are counted,
    not walked: an hour-long outage at a 10-s ceiling would otherwise be 360 steps per pair, phase
    and outage, every evaluation of every upstream."""
    total = 0.0
    for phase in JITTER_PHASES:
        for failing in outages:
            t, period = 0.0, opening
            while backoff > 1.0 and period < ceiling and t + period * phase <= failing:
                t += period * phase  # a trial that still failed, while the periods grow
                total += failed_cost
                period = min(period * backoff, ceiling)
            step = period * phase  # every period from here on is this long
            failed = max(0, math.floor((failing - t) / step)) if failing >= t else 0
            total += failed_cost * failed + calls_per_pod * (t + (failed + 1) * step - failing)
    return total / len(JITTER_PHASES)


@dataclass(frozen=True, slots=True)
class OpenPeriods:
    opening: float
    ceiling: float
    openings: tuple[float, float]  # the openings kept (within NEAR_BEST) at this ceiling
    ceilings: tuple[float, float]  # the ceilings kept at this opening


@functools.lru_cache(maxsize=MEMO_SIZE)
def cheapest(
    outages: tuple[float, ...],
    *,
    low: float,
    high: float,
    calls_per_pod: float,
    backoff: float,
    failed_cost: float,
) -> OpenPeriods:
    """The cheapest pair within [low, high] (opening at most the ceiling). Of pairs that cost the same
    (outages the first period always outlasts, or never reaches), the highest ceiling: backing off is
    what keeps the failed trials of an outage longer than any seen so far few."""
    candidates = sorted({min(max(c, low), high) for c in CANDIDATES})
    costs = {
        (o, c): cost(o, c, outages, calls_per_pod=calls_per_pod, backoff=backoff, failed_cost=failed_cost)
        for c in candidates
        for o in candidates
        if o <= c
    }
    opening, ceiling = min(costs, key=lambda pair: (costs[pair], -pair[1], pair[0]))
    line = NEAR_BEST * costs[opening, ceiling] + failed_cost
    openings = [o for (o, c), v in costs.items() if c == ceiling and v <= line]
    ceilings = [c for (o, c), v in costs.items() if o == opening and v <= line]
    return OpenPeriods(
        float(opening), float(ceiling), (min(openings), max(openings)), (min(ceilings), max(ceilings))
    )
