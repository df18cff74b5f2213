"""The fast path's shared deadlines, on a real uvloop event loop: each fires once, on time (within a
bucket's width), unless cleared or replaced; and with none pending, no timer is left armed."""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Coroutine
from typing import Any, TypeVar

import pytest
import uvloop

from breakwater.proxy.fast.deadlines import EARLY, TICK, DeadlineOwner, Deadlines

T = TypeVar("T")
SLACK = 0.05  # how late the loop itself may run on a loaded machine


class Owner:
    def __init__(self, deadlines: Deadlines | None = None, then: float | None = None) -> None:
        self.deadline_bucket: set[DeadlineOwner] | None = None
        self.fired: list[float] = []
        self.deadlines = deadlines
        self.then = then  # a deadline to set from the callback, after this many seconds

    def on_deadline(self) -> None:
        loop = asyncio.get_running_loop()
        self.fired.append(loop.time())
        if self.deadlines is not None and self.then is not None:
            at, self.then = loop.time() + self.then, None
            self.deadlines.set(self, at)


def run(coro_fn: Callable[[], Coroutine[Any, Any, T]]) -> T:
    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        return runner.run(coro_fn())


def test_each_deadline_fires_once_between_its_time_and_one_bucket_later() -> None:
    async def main() -> list[tuple[float, list[float]]]:
        loop = asyncio.get_running_loop()
        deadlines = Deadlines()
        owners = [(loop.time() + delay, Owner()) for delay in (0.03, 0.01, 0.02, 0.02, 0.05)]
        for at, owner in owners:
            deadlines.set(owner, at)
        await asyncio.sleep(0.2)
        return [(at, owner.fired) for at, owner in owners]

    for at, fired in run(main):
        assert len(fired) == 1
        assert at - EARLY <= fired[0] <= at + TICK + SLACK


def test_a_cleared_deadline_never_fires_and_a_replaced_one_fires_at_its_new_time() -> None:
    async def main() -> tuple[Owner, Owner, float, int]:
        loop = asyncio.get_running_loop()
        deadlines = Deadlines()
        cleared, replaced = Owner(), Owner()
        deadlines.set(cleared, loop.time() + 0.02)
        deadlines.set(replaced, loop.time() + 0.02)
        Deadlines.clear(cleared)
        new_at = loop.time() + 0.08
        deadlines.set(replaced, new_at)
        await asyncio.sleep(0.2)
        return cleared, replaced, new_at, len(deadlines)

    cleared, replaced, new_at, pending = run(main)
    assert cleared.fired == []
    assert len(replaced.fired) == 1
    assert replaced.fired[0] >= new_at - EARLY
    assert pending == 0


def test_an_earlier_deadline_set_after_a_later_one_is_not_held_back_by_it() -> None:
    async def main() -> tuple[float, list[float]]:
        loop = asyncio.get_running_loop()
        deadlines = Deadlines()
        deadlines.set(Owner(), loop.time() + 10.0)
        early = Owner()
        at = loop.time() + 0.02
        deadlines.set(early, at)
        await asyncio.sleep(0.15)
        deadlines.close()
        return at, early.fired

    at, fired = run(main)
    assert len(fired) == 1
    assert fired[0] <= at + TICK + SLACK


def test_a_deadline_set_from_a_callback_fires_too() -> None:
    async def main() -> list[float]:
        loop = asyncio.get_running_loop()
        deadlines = Deadlines()
        owner = Owner(deadlines, then=0.0)  # due at once: lands in a bucket already passed
        deadlines.set(owner, loop.time() + 0.01)
        await asyncio.sleep(0.15)
        return owner.fired

    assert len(run(main)) == 2


@pytest.mark.parametrize("cleared", [True, False])
def test_with_no_deadline_pending_no_timer_stays_armed(cleared: bool) -> None:
    """An idle sidecar must not wake up for deadlines of requests long answered."""

    async def main() -> bool:
        loop = asyncio.get_running_loop()
        deadlines = Deadlines()
        owners = [Owner() for _ in range(100)]
        for i, owner in enumerate(owners):
            deadlines.set(owner, loop.time() + 0.01 + i * 0.001)
        if cleared:
            for owner in owners:
                Deadlines.clear(owner)
        await asyncio.sleep(0.2)
        return deadlines._handle is None

    assert run(main)


def test_a_far_deadline_fires_within_a_128th_of_its_delay() -> None:
    async def main() -> tuple[float, float, list[float]]:
        loop = asyncio.get_running_loop()
        deadlines = Deadlines()
        owner = Owner()
        delay = 1.5
        at = loop.time() + delay
        deadlines.set(owner, at)
        await asyncio.sleep(delay + 0.2)
        return at, delay, owner.fired

    at, delay, fired = run(main)
    assert len(fired) == 1
    assert at - EARLY <= fired[0] <= at + delay / 128 + SLACK


def test_long_timeouts_keep_few_buckets_alive() -> None:
    """Memory does not grow with the timeout: deadlines 30 s ahead share wide buckets."""

    async def main() -> int:
        loop = asyncio.get_running_loop()
        deadlines = Deadlines()
        for i in range(30_000):  # one request every ms for 30 s, each with a 30 s timeout
            deadlines.set(Owner(), loop.time() + 30.0 + i / 1000)
        buckets = len(deadlines._buckets)
        deadlines.close()
        return buckets

    assert run(main) <= 300


def test_a_deadline_for_a_bucket_that_already_fired_still_fires() -> None:
    # `set` reuses the bucket it chose last while a deadline falls in it: never one already emptied.
    async def main() -> tuple[list[float], list[float], float]:
        loop = asyncio.get_running_loop()
        deadlines = Deadlines()
        first, late = Owner(), Owner()
        at = loop.time() + 0.02
        deadlines.set(first, at)
        await asyncio.sleep(0.1)
        deadlines.set(late, at)  # the same instant, now past: due at once
        set_at = loop.time()
        await asyncio.sleep(0.1)
        return first.fired, late.fired, set_at

    first, late, set_at = run(main)
    assert len(first) == 1
    assert len(late) == 1
    assert late[0] <= set_at + TICK + SLACK


def test_a_short_delay_never_rides_in_the_wider_bucket_a_long_one_chose_for_the_same_instant() -> None:
    async def main() -> tuple[bool, float, list[float], list[float]]:
        loop = asyncio.get_running_loop()
        deadlines = Deadlines()
        long_owner, short_owner = Owner(), Owner()
        at = loop.time() + 2.0  # a bucket 2 ticks wide
        deadlines.set(long_owner, at)
        await asyncio.sleep(1.96)
        deadlines.set(short_owner, at)  # 40 ms ahead now: a bucket 1 tick wide
        apart = short_owner.deadline_bucket is not long_owner.deadline_bucket
        await asyncio.sleep(0.2)
        return apart, at, long_owner.fired, short_owner.fired

    apart, at, long_fired, short_fired = run(main)
    assert apart
    assert at - EARLY <= long_fired[0] <= at + 2 * TICK + SLACK
    assert at - EARLY <= short_fired[0] <= at + TICK + SLACK
