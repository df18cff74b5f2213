"""Runs of failures: how often chance alone makes k failures in a row, and how sure that figure is.

Pure arithmetic for the tuner's consecutiveFailures (`tuner.evidence`): each bucket's chance of a
success followed by k failures, read through a Beta prior fitted to the window, and the standard
error of a sum over the window's buckets taken in time order.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

__all__ = ["MAX_RUN", "beta_prior", "run_chances", "total_error"]

MAX_RUN = 40  # the longest run length weighed (consecutiveFailures is bounded far below it)


def run_chances(calls: int, failures: int, prior: tuple[float, float] | None) -> list[float]:
    """Per run length k = 1..MAX_RUN: the chance that a call of a bucket of `calls` calls with
    `failures` failures is a success followed by k failures, E[(1 - p) p^k], over what the counts say
    of the bucket's failure probability p: a Beta(a + f, b + n - f) with the window's Beta(a, b)
    prior (`prior` None: every bucket at the window's mean, which is then passed as (mean, 0))."""
    if prior is None:
        return [0.0] * MAX_RUN
    a, b = prior
    if b == 0.0:  # no spread between buckets: p is the window's mean, a
        return [(1 - a) * a**k for k in range(1, MAX_RUN + 1)]
    a, b = a + failures, b + calls - failures
    out: list[float] = []
    failures_first = 1.0  # E[p^k] = prod (a + i) / (a + b + i), i < k
    for k in range(MAX_RUN):
        failures_first *= (a + k) / (a + b + k)
        out.append(failures_first * b / (a + b + k + 1))  # then a success: E[(1 - p) p^k]
    return out


def beta_prior(mean: float, spread: float) -> tuple[float, float] | None:
    """The Beta(a, b) of the buckets' failure probabilities with this mean and standard deviation
    (method of moments); (mean, 0) with no spread; None with no failures or no successes.

    The runs come from the bad minutes, so each bucket's own counts matter, but read alone they
    mislead: the plug-in (1 - f/n)(f/n)^k is biased upwards in small buckets, and falling factorials
    are unbiased but mostly zero (18 calls show no run of 5 unless 5 of them failed), which put the
    "less than once a day" run one or two failures too low. The prior pulls a small bucket towards
    the window and leaves a large one its own rate."""
    if not 0.0 < mean < 1.0:
        return None
    variance = min(spread**2, 0.99 * mean * (1 - mean))
    if variance <= 1e-12:
        return (mean, 0.0)
    size = mean * (1 - mean) / variance - 1
    return (mean * size, (1 - mean) * size)


def total_error(parts: Sequence[float]) -> float:
    """The standard error of sum(parts), the window's buckets taken as a sample of the upstream's
    minutes in time order: Newey-West, with the autocovariances of neighbouring buckets up to
    floor(4 (n / 100) ^ (2/9)) apart (3 of 60) weighted down linearly. A failure rate that holds for
    minutes makes neighbours alike, and their spread alone would understate the error."""
    if not any(parts):
        return 0.0
    n = len(parts)
    mean = sum(parts) / n
    d = [x - mean for x in parts]
    lags = min(n - 1, int(4 * (n / 100) ** (2 / 9)))
    variance = sum(x * x for x in d)
    for lag in range(1, lags + 1):
        variance += 2 * (1 - lag / (lags + 1)) * sum(a * b for a, b in zip(d, d[lag:], strict=False))
    return math.sqrt(max(0.0, variance * n / (n - 1)))
