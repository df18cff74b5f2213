"""The retry budget: retries may add at most ``budgetPercent`` of the requests of a sliding window.

A retry storm is how a struggling upstream gets finished off; the budget caps the extra load retries
add, whatever the per-request ``attempts`` say. Requests and retries are counted in one-second buckets
over the last ``window`` seconds. There is deliberately no floor (``minimum retries per second``): at very
low traffic a retry waits until enough requests were seen to pay for it.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable

__all__ = ["RetryBudget"]


class RetryBudget:
    __slots__ = (
        "_bucket",
        "_clock",
        "_percent",
        "_requests",
        "_retries",
        "_size",
        "_total_req",
        "_total_ret",
    )

    def __init__(
        self, percent: float, *, window_seconds: int = 10, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self._percent = percent
        self._clock = clock
        self._size = window_seconds
        self._requests = [0] * window_seconds
        self._retries = [0] * window_seconds
        self._bucket = math.floor(clock())
        self._total_req = 0
        self._total_ret = 0

    @property
    def percent(self) -> float:
        return self._percent

    @percent.setter
    def percent(self, value: float) -> None:
        self._percent = value

    def _advance(self, now: int) -> int:
        """Move the window to the second `now` (``floor`` of the clock); its bucket's index."""
        bucket = self._bucket
        if now != bucket:
            steps = min(now - bucket, self._size)
            for k in range(1, steps + 1):
                i = (bucket + k) % self._size
                self._total_req -= self._requests[i]
                self._total_ret -= self._retries[i]
                self._requests[i] = 0
                self._retries[i] = 0
            self._bucket = now
        return now % self._size

    def record_request(self) -> None:
        """Count one original (first-try) request."""
        now = math.floor(self._clock())
        if now != self._bucket:  # (the window moves at most once a second: no call otherwise)
            self._advance(now)
        self._requests[now % self._size] += 1
        self._total_req += 1

    def try_spend(self) -> bool:
        """Take one retry from the budget; False when it would exceed the allowed share."""
        i = self._advance(math.floor(self._clock()))
        if (self._total_ret + 1) * 100.0 > self._percent * self._total_req:
            return False
        self._retries[i] += 1
        self._total_ret += 1
        return True

    def figures(self) -> tuple[int, int]:
        """(requests, retries) in the current window."""
        self._advance(math.floor(self._clock()))
        return self._total_req, self._total_ret
