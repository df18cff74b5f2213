"""The fast path's deadlines: one event-loop timer for every request in flight, not one per request.

A uvloop timer handle costs about 8 µs to create and cancel (a libuv handle allocated, started,
closed), a tenth of what a proxied request costs, and nearly every deadline is cancelled: the answer
comes first. So deadlines are kept in buckets (a set of owners each), and one timer is armed for the
earliest bucket that is not empty. Setting and clearing a deadline is a set insertion and removal
(and while deadlines keep falling in the bucket the last one went to, as the requests of one timeout
arriving within a bucket's width do, `set` does not work out which bucket again).
When the timer fires, the buckets that are due are emptied (their owners' `on_deadline` is called)
and the timer is armed for the next one; buckets emptied meanwhile are skipped. With traffic
flowing, the timer fires about once per timeout period, for the oldest request still in flight.

A bucket's width grows with how far ahead its deadlines are, as in a hierarchical timing wheel:
`TICK` for deadlines up to `_SPAN` ahead, doubling with each doubling beyond. So about 256 buckets
live per timeout in use whatever it is (a 30 s timeout does not keep 6,000 sets alive), and a
deadline fires at most `TICK` or 1/128 of its delay late, whichever is larger, and at most `EARLY`
early (uvloop's timers have millisecond resolution: a bucket due within it is due now).
"""

from __future__ import annotations

import asyncio
import heapq
import math
from typing import Final, Protocol

__all__ = ["EARLY", "TICK", "DeadlineOwner", "Deadlines"]

TICK: Final = 0.005
"""The narrowest bucket, in seconds: how late a deadline less than `_SPAN` ahead may fire."""
EARLY: Final = 0.001
_SPAN: Final = TICK * 256
_WIDTHS: Final = 32  # width classes in a bucket key: width = TICK * 2**class


class DeadlineOwner(Protocol):
    deadline_bucket: set[DeadlineOwner] | None

    def on_deadline(self) -> None: ...


class Deadlines:
    """Deadlines of many owners on one event loop (see the module docstring)."""

    __slots__ = (
        "_armed_at",
        "_buckets",
        "_due",
        "_handle",
        "_last",
        "_last_due",
        "_last_from",
        "_last_min",
        "_loop",
    )

    def __init__(self) -> None:
        # The loop of the first deadline, kept: asyncio.get_running_loop() makes a getpid() system
        # call on every use (CPython 3.11 checks the loop belongs to this process).
        self._loop: asyncio.AbstractEventLoop | None = None
        self._buckets: dict[int, set[DeadlineOwner]] = {}  # by key: index * _WIDTHS + width class
        self._due: list[tuple[float, int]] = []  # a heap: (due time, key) of every bucket
        self._handle: asyncio.TimerHandle | None = None
        self._armed_at = math.inf  # the due time the handle fires for
        # The bucket the last `set` chose, while it lives: deadlines in (_last_from, _last_due] with a
        # delay of at least _last_min (its width suits them) go there without the arithmetic.
        self._last: set[DeadlineOwner] | None = None
        self._last_from = self._last_due = self._last_min = math.inf

    def __len__(self) -> int:
        return sum(len(bucket) for bucket in self._buckets.values())

    def set(self, owner: DeadlineOwner, at: float) -> None:
        """`owner.on_deadline()` at the running loop's time `at` (a little later: see the module
        docstring), unless cleared first. An owner has one deadline: setting another replaces it."""
        bucket = owner.deadline_bucket
        if bucket is not None:
            bucket.discard(owner)
        loop = self._loop
        if loop is None:
            loop = self._loop = asyncio.get_running_loop()
        delay = at - loop.time()
        bucket = self._last
        if bucket is None or not (self._last_from < at <= self._last_due and delay >= self._last_min):
            width_class = min(_WIDTHS - 1, int(delay / _SPAN).bit_length())
            width = TICK * (1 << width_class)
            index = math.ceil(at / width)
            key = index * _WIDTHS + width_class
            due = index * width
            bucket = self._buckets.get(key)
            if bucket is None:
                bucket = self._buckets[key] = set()
                heapq.heappush(self._due, (due, key))
                if due < self._armed_at:
                    self._arm(loop, due)
            self._last = bucket
            self._last_from = due - width
            self._last_due = due
            self._last_min = _SPAN * (1 << (width_class - 1)) if width_class else -math.inf
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
        self._due.clear()
        self._armed_at = math.inf
        self._loop = None
        self._last = None

    def _arm(self, loop: asyncio.AbstractEventLoop, due: float) -> None:
        if self._handle is not None:
            self._handle.cancel()
        self._armed_at = due
        self._handle = loop.call_at(due, self._fire)

    def _fire(self) -> None:
        self._handle = None
        self._armed_at = math.inf
        loop = self._loop
        assert loop is not None  # armed by `set`
        now = loop.time() + EARLY
        heap = self._due
        buckets = self._buckets
        while heap:
            due, key = heap[0]
            if due > now:
                if not buckets[key]:  # emptied since: no reason to wake up for it
                    heapq.heappop(heap)
                    if buckets.pop(key) is self._last:
                        self._last = None
                    continue
                self._arm(loop, due)
                return
            heapq.heappop(heap)
            bucket = buckets.pop(key)  # before the callbacks: a deadline they set lands in a new bucket
            if bucket is self._last:
                self._last = None
            for owner in list(bucket):
                if owner.deadline_bucket is bucket:
                    owner.deadline_bucket = None
                    owner.on_deadline()
