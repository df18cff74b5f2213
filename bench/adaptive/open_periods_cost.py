"""What pricing the open periods costs the tuner per upstream evaluation, cold and remembered.

1,000 upstreams, each with 8 outages of 30-60 min recorded (the worst case: every pair of candidates
walks long outages), evaluated in turn as the tuner does every 30 s; the rate wobbles by up to 2 %.

    .venv/bin/python bench/adaptive/open_periods_cost.py
"""

from __future__ import annotations

import random
import time

from breakwater.adaptive import open_periods as op

UPSTREAMS = 1_000


def evaluate_all(outages: list[tuple[float, ...]], rng: random.Random, wobble: float) -> float:
    """Milliseconds per upstream for one pass of the tuner over every upstream."""
    started = time.perf_counter()
    for recorded in outages:
        rate = op.priced_rate(1.0 + wobble * rng.random())
        op.cheapest(recorded, low=5, high=300, calls_per_pod=rate, backoff=2.0, failed_cost=2.0)
    return (time.perf_counter() - started) / len(outages) * 1000


def main() -> None:
    rng = random.Random(1)
    outages = [tuple(sorted(rng.uniform(1800, 3600) for _ in range(8))) for _ in range(UPSTREAMS)]
    cold = evaluate_all(outages, rng, 0.0)
    warm = [evaluate_all(outages, rng, 0.02) for _ in range(5)]
    print(f"{UPSTREAMS} upstreams x 8 long outages: first pass {cold:.2f} ms per upstream")
    print(f"later passes (rate wobbling 2 %): {min(warm) * 1000:.1f}-{max(warm) * 1000:.1f} µs per upstream")


if __name__ == "__main__":
    main()
