"""The bulkhead: at most N requests in flight to one upstream, M more waiting in line, the rest refused."""

from __future__ import annotations

import asyncio
import contextlib
from collections import deque
from collections.abc import Callable

__all__ = ["BulkheadSemaphore"]


class BulkheadSemaphore:
    """A counting semaphore with a bounded, FIFO waiting line and a waiting deadline.

    `try_enter` is the synchronous fast path; `enter` may wait (up to `timeout`) when a slot in the line
    is free. Every successful enter is paired with exactly one `leave`. A slot released while someone
    waits is handed over directly, so late arrivals cannot overtake the line.
    """

    __slots__ = ("_active", "_max_concurrent", "_max_pending", "_waiters")

    def __init__(self, max_concurrent: int, max_pending: int = 0) -> None:
        self._max_concurrent = max_concurrent
        self._max_pending = max_pending
        self._active = 0
        self._waiters: deque[asyncio.Future[None]] = deque()

    @property
    def active(self) -> int:
        return self._active

    @property
    def pending(self) -> int:
        return sum(1 for w in self._waiters if not w.done())

    @property
    def limits(self) -> tuple[int, int]:
        return self._max_concurrent, self._max_pending

    def try_enter(self) -> bool:
        if self._active < self._max_concurrent and not self._waiters:
            self._active += 1
            return True
        return False

    async def enter(self, wait_seconds: float) -> bool:
        """Take a slot, waiting in line up to `wait_seconds` if the line has room. False: refused."""
        if self.try_enter():
            return True
        if self.pending >= self._max_pending or wait_seconds <= 0:
            return False
        waiter: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._waiters.append(waiter)
        try:
            async with asyncio.timeout(wait_seconds):
                await waiter
        except TimeoutError:
            return self._abandon(waiter)
        except asyncio.CancelledError:
            if self._abandon(waiter):
                self.leave()
            raise
        return True

    def wait_for_slot(
        self, on_slot: Callable[[bool], None], wait_seconds: float
    ) -> asyncio.Future[None] | None:
        """`enter` for callers without a Task (the fast path): None when refused at once; else the waiter,
        and `on_slot(True)` once a slot is handed over, `on_slot(False)` after `wait_seconds`. Cancelling
        the waiter leaves the line (`abandon`)."""
        if self.pending >= self._max_pending or wait_seconds <= 0:
            return None
        loop = asyncio.get_running_loop()
        waiter: asyncio.Future[None] = loop.create_future()
        self._waiters.append(waiter)
        timer = loop.call_later(wait_seconds, self._expire, waiter, on_slot)

        def handed_over(w: asyncio.Future[None]) -> None:
            timer.cancel()
            if not w.cancelled():
                on_slot(True)

        waiter.add_done_callback(handed_over)
        return waiter

    def _expire(self, waiter: asyncio.Future[None], on_slot: Callable[[bool], None]) -> None:
        if not waiter.done():
            self._abandon(waiter)
            on_slot(False)

    def abandon(self, waiter: asyncio.Future[None]) -> None:
        """Leave the line (the caller went away); a slot handed over meanwhile is given back."""
        if self._abandon(waiter):
            self.leave()

    def _abandon(self, waiter: asyncio.Future[None]) -> bool:
        """Leave the line; True when a slot had been handed over meanwhile (the caller now holds it)."""
        handed = waiter.done() and not waiter.cancelled()
        if not waiter.done():
            waiter.cancel()
        with contextlib.suppress(ValueError):
            self._waiters.remove(waiter)
        return handed

    def leave(self) -> None:
        """Give a slot back (to the first live waiter, if any)."""
        while self._waiters:
            waiter = self._waiters.popleft()
            if not waiter.done():
                waiter.set_result(None)
                return
        self._active -= 1  # (the line is empty now: nobody to admit)

    def resize(self, max_concurrent: int, max_pending: int) -> None:
        """Adopt new limits; slots already held are kept (a lowered limit may be exceeded for a while)."""
        self._max_concurrent = max_concurrent
        self._max_pending = max_pending
        self._admit_waiters()

    def _admit_waiters(self) -> None:
        while self._waiters and self._active < self._max_concurrent:
            waiter = self._waiters.popleft()
            if not waiter.done():
                self._active += 1
                waiter.set_result(None)
