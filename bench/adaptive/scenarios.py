"""The replay benchmark's scenarios, its policy and its score: fixed here BEFORE the tuner was tuned.

Each scenario is a function of a seed that yields per-call data (consecutive-failure rules need calls,
not buckets): Poisson arrivals per pod, an outcome and a duration per call, and the incidents (ground
truth) during which the upstream was failing. A call whose duration reaches the policy's timeout is a
failure (a timeout), as the sidecar counts it. Everything is generated; nothing touches a network.

The score, stated in advance (lower is better):

    score = rejected_healthy + 2 * failed_in_incidents

`rejected_healthy`: calls the breaker rejected although the upstream would have answered them with a
success; `failed_in_incidents`: failed calls the breaker let through while the upstream was failing
(known incidents). A failure let through costs the caller the wait for it (up to the timeout) and load
on a failing upstream, a rejection costs one fast fallback, hence the weight 2.
"""

from __future__ import annotations

import math
import random
from collections.abc import Callable, Iterator
from dataclasses import dataclass

from breakwater.adaptive.replay import Call, Incident

SEEDS = (1, 2, 3)
TIMEOUT = 2.0
FAILURE_WEIGHT = 2

POLICY = {
    "trip": {
        "consecutiveFailures": 5,
        "failureRate": {"percent": 50},
        "slowCalls": {"percent": 80, "slowerThan": "1s"},
    },
    "timeout": "2s",
    "adaptive": {"enabled": True},
}
"""The rules the benchmark's policy turns on, at the spec's default values (slowerThan has no default:
1s, half the default timeout); `adaptive` at its defaults when the adaptive run enables it."""

HOUR = 3600.0


def score(rejected_healthy: int, failed_in_incidents: int) -> int:
    return rejected_healthy + FAILURE_WEIGHT * failed_in_incidents


@dataclass(frozen=True)
class Scenario:
    name: str
    description: str
    hours: float
    pods: int
    make: Callable[[random.Random], tuple[list[Call], list[Incident]]]

    def generate(self, seed: int) -> tuple[list[Call], list[Incident]]:
        return self.make(random.Random(seed))


def _arrivals(
    rng: random.Random, pods: int, rate_per_pod: float, seconds: float
) -> Iterator[tuple[float, int]]:
    """Poisson arrivals of every pod, merged in time order."""
    events: list[tuple[float, int]] = []
    for pod in range(pods):
        t = rng.expovariate(rate_per_pod)
        while t < seconds:
            events.append((t, pod))
            t += rng.expovariate(rate_per_pod)
    events.sort()
    yield from events


def _call(at: float, pod: int, duration: float, failed: bool) -> Call:
    if duration >= TIMEOUT:
        return Call(at, pod, TIMEOUT, False)
    return Call(at, pod, duration, not failed)


def _in(incidents: list[Incident], t: float) -> bool:
    return any(i.start <= t < i.end for i in incidents)


def steady_day(rng: random.Random) -> tuple[list[Call], list[Incident]]:
    """24 h, 3 pods at 1 call/s each, 2 % failures, latency median 80 ms; an outage of 4 min at 08:00
    (connections refused: fast failures) and one of 12 min at 17:00 (every call times out)."""
    refused, hanging = Incident(8 * HOUR, 8 * HOUR + 240), Incident(17 * HOUR, 17 * HOUR + 720)
    calls = []
    for t, pod in _arrivals(rng, 3, 1.0, 24 * HOUR):
        if refused.start <= t < refused.end:
            calls.append(Call(t, pod, 0.002, False))
        elif hanging.start <= t < hanging.end:
            calls.append(Call(t, pod, TIMEOUT, False))
        else:
            calls.append(_call(t, pod, rng.lognormvariate(math.log(0.08), 0.5), rng.random() < 0.02))
    return calls, [refused, hanging]


def latency_drift(rng: random.Random) -> tuple[list[Call], list[Incident]]:
    """12 h, 3 pods at 1.5 calls/s each, 1 % failures; the latency median drifts from 150 ms to 1.2 s
    (a slowly degrading dependency that still answers), and at 10:00 for 10 min the upstream stalls
    (latency x 5: nearly every call times out)."""
    stall = Incident(10 * HOUR, 10 * HOUR + 600)
    calls = []
    for t, pod in _arrivals(rng, 3, 1.5, 12 * HOUR):
        median = 0.15 + (1.2 - 0.15) * t / (12 * HOUR)
        if stall.start <= t < stall.end:
            median *= 5
        calls.append(_call(t, pod, rng.lognormvariate(math.log(median), 0.4), rng.random() < 0.01))
    return calls, [stall]


def noisy_low_traffic(rng: random.Random) -> tuple[list[Call], list[Incident]]:
    """12 h, 3 pods at 1 call every 6 s each; the failure rate jumps every 5 min to anywhere between 0
    and 20 %, latency median 200 ms with a wide spread; one outage of 20 min at 06:00."""
    outage = Incident(6 * HOUR, 6 * HOUR + 1200)
    rates = [rng.uniform(0.0, 0.2) for _ in range(12 * 12 + 1)]
    calls = []
    for t, pod in _arrivals(rng, 3, 1 / 6, 12 * HOUR):
        if _in([outage], t):
            calls.append(Call(t, pod, 0.003, False))
            continue
        failed = rng.random() < rates[int(t // 300)]
        calls.append(_call(t, pod, rng.lognormvariate(math.log(0.2), 0.8), failed))
    return calls, [outage]


SCENARIOS = (
    Scenario("steady-day-two-outages", steady_day.__doc__ or "", 24, 3, steady_day),
    Scenario("slow-latency-drift", latency_drift.__doc__ or "", 12, 3, latency_drift),
    Scenario("noisy-low-traffic", noisy_low_traffic.__doc__ or "", 12, 3, noisy_low_traffic),
)

GRID = {
    "consecutiveFailures": (3, 5, 8, 12, 20),
    "failureRatePercent": (30, 50, 70),
    "slowerThan": ("1s", "1500ms", "1800ms"),
    "openDuration": ("10s", "30s", "60s", "120s"),
}
"""The hindsight grid: every combination of these static thresholds is replayed, the best score wins."""
