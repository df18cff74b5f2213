"""The fast path's deadlines: one event-loop timer for every request in flight, not one per request.

A uvloop timer handle costs about 8 µs to create and cancel (a libuv handle allocated, started,
closed), a tenth of what a proxied request costs, and nearly every deadline is cancelled: the answer
comes first. So deadlines are kept in buckets of `TICK` seconds (a set of owners per tick, and a heap
of the ticks that have a bucket), and one timer is armed for the earliest bucket that is not empty.
Setting and clearing a deadline is a set insertion and removal. When the timer fires, the buckets
whose tick has passed are emptied (their owners' `on_deadline` is called) and the timer is armed for
the next one; buckets emptied meanwhile are skipped. With traffic flowing, the timer fires about once
per timeout period, for the oldest request still in flight.

A deadline fires at most `TICK` late (its bucket's tick is rounded up) and at most `EARLY` early
(uvloop's timers have millisecond resolution: a bucket due within it is due now, not re-armed).
"""

from __future__ import annotations

import asyncio
import heapq
import math
from typing import Final, Protocol

__all__ = ["EARLY", "TICK", "DeadlineOwner", "Deadlines"]

TICK: Final = 0.005
"""Seconds per bucket: how late a deadline may fire."""
EARLY: Final = 0.001


class DeadlineOwner(Protocol):
    deadline_bucket: set[DeadlineOwner] | None

    def on_deadline(self) -> None: ...


class Deadlines:
    """Deadlines of many owners on one event loop (see the module docstring)."""

    __slots__ = ("_armed_at", "_buckets", "_handle", "_ticks")

    def __init__(self) -> None:
        self._buckets: dict[int, set[DeadlineOwner]] = {}
        self._ticks: list[int] = []  # a heap: the ticks in `_buckets`
        self._handle: asyncio.TimerHandle | None = None
        self._armed_at = -1  # the tick the handle fires for

    def __len__(self) -> int:
        return sum(len(bucket) for bucket in self._buckets.values())

    def set(self, owner: DeadlineOwner, at: float) -> None:
        """`owner.on_deadline()` at the running loop's time `at` (up to `TICK` later), unless cleared
        first. An owner has one deadline: setting it again replaces the last one."""
        bucket = owner.deadline_bucket
        if bucket is not None:
            bucket.discard(owner)
        tick = math.ceil(at / TICK)
        bucket = self._buckets.get(tick)
        if bucket is None:
            bucket = self._buckets[tick] = set()
            heapq.heappush(self._ticks, tick)
            if self._armed_at < 0 or tick < self._armed_at:
                self._arm(tick)
        bucket.add(owner)
        owner.deadline_bucket = bucket

    @staticmethod
    def clear(owner: DeadlineOwner) -> None:
        bucket = owner.deadline_bucket
        if bucket is not None:
            bucket.discard(owner)
            owner.deadline_bucket = None

    def close(self) -> None:
        if self._handle is not None:
            self._handle.cancel()
            self._handle = None
        for bucket in self._buckets.values():
            for owner in bucket:
                owner.deadline_bucket = None
        self._buckets.clear()
        self._ticks.clear()
        self._armed_at = -1

    def _arm(self, tick: int) -> None:
        if self._handle is not None:
            self._handle.cancel()
        self._armed_at = tick
        self._handle = asyncio.get_running_loop().call_at(tick * TICK, self._fire)

    def _fire(self) -> None:
        self._handle = None
        self._armed_at = -1
        now = asyncio.get_running_loop().time() + EARLY
        ticks = self._ticks
        buckets = self._buckets
        while ticks:
            tick = ticks[0]
            bucket = buckets[tick]
            if tick * TICK > now:
                if not bucket:  # emptied since: no reason to wake up for it
                    heapq.heappop(ticks)
                    del buckets[tick]
                    continue
                self._arm(tick)
                return
            heapq.heappop(ticks)
            del buckets[tick]  # before the callbacks: a deadline they set lands in a new bucket
            for owner in list(bucket):
                if owner.deadline_bucket is bucket:
                    owner.deadline_bucket = None
                    owner.on_deadline()
