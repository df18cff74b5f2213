"""The fast path's shared deadlines, on a real uvloop event loop: each fires once, on time (within a
bucket's width, or no later than a plain timer for the end of it when the loop itself runs late),
unless cleared or replaced; and with none pending, no timer is left armed."""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Coroutine
from typing import Any, TypeVar

import pytest
import uvloop

from breakwater.proxy.fast.deadlines import EARLY, TICK, DeadlineOwner, Deadlines

T = TypeVar("T")
# uvloop keeps time in whole milliseconds and reads the clock afresh in each callback: a deadline due in
# the same millisecond as its reference timer (below) may run just after it, a millisecond on.
SLACK = 0.003


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


def reference(at: float, late: float) -> list[float]:
    """A plain loop timer for `at + late`, the latest a deadline for `at` may be due: the list gets
    the loop time it ran at. On a loaded machine the loop itself can run 0.3 s late; a deadline due no
    later than this timer then runs in the same pass of the loop or an earlier one, so this timer
    tells how late the deadline may be without Deadlines being at fault."""
    loop = asyncio.get_running_loop()
    ran: list[float] = []
    loop.call_at(at + late, lambda: ran.append(loop.time()))
    return ran


def assert_on_time(fired: list[float], at: float, late: float, ref: list[float]) -> None:
    """Fired once, at most EARLY early and at most `late` late, or no later than the loop ran `ref`."""
    assert len(fired) == 1
    assert at - EARLY <= fired[0] <= max(at + late, ref[0]) + SLACK


def test_each_deadline_fires_once_between_its_time_and_one_bucket_later() -> None:
    async def main() -> list[tuple[float, list[float], list[float]]]:
        loop = asyncio.get_running_loop()
        deadlines = Deadlines()
        owners = [(loop.time() + delay, Owner()) for delay in (0.03, 0.01, 0.02, 0.02, 0.05)]
        refs = []
        for at, owner in owners:
            deadlines.set(owner, at)
            refs.append(reference(at, TICK))
        await asyncio.sleep(0.2)
        return [(at, owner.fired, ref) for (at, owner), ref in zip(owners, refs, strict=True)]

    for at, fired, ref in run(main):
        assert_on_time(fired, at, TICK, ref)


def test_a_cleared_deadline_never_fires_and_a_replaced_one_fires_at_its_new_time() -> None:
    async def main() -> tuple[Owner, Owner, float, list[float], int]:
        loop = asyncio.get_running_loop()
        deadlines = Deadlines()
        cleared, replaced = Owner(), Owner()
        deadlines.set(cleared, loop.time() + 0.02)
        deadlines.set(replaced, loop.time() + 0.02)
        Deadlines.clear(cleared)
        new_at = loop.time() + 0.08
        deadlines.set(replaced, new_at)
        ref = reference(new_at, TICK)
        await asyncio.sleep(0.2)
        return cleared, replaced, new_at, ref, len(deadlines)

    cleared, replaced, new_at, ref, pending = run(main)
    assert cleared.fired == []
    assert_on_time(replaced.fired, new_at, TICK, ref)
    assert pending == 0


def test_an_earlier_deadline_set_after_a_later_one_is_not_held_back_by_it() -> None:
    async def main() -> tuple[float, list[float], list[float]]:
        loop = asyncio.get_running_loop()
        deadlines = Deadlines()
        deadlines.set(Owner(), loop.time() + 10.0)
        early = Owner()
        at = loop.time() + 0.02
        deadlines.set(early, at)
        ref = reference(at, TICK)
        await asyncio.sleep(0.15)
        deadlines.close()
        return at, early.fired, ref

    at, fired, ref = run(main)
    assert_on_time(fired, at, TICK, ref)


def test_a_deadline_set_from_a_callback_fires_too() -> None:
    async def main() -> list[float]:
        loop = asyncio.get_running_loop()
        deadlines = Deadlines()
        owner = Owner(deadlines, then=0.0)  # due at once: lands in a bucket already passed
        deadlines.set(owner, loop.time() + 0.01)
        await asyncio.sleep(0.15)
        # A loop running 0.15 s late ends that sleep in the pass that runs the first deadline, before
        # the second (up to a bucket later) is due: give the second a bucket's width from there.
        await asyncio.sleep(2 * TICK)
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
    delay = 1.5

    async def main() -> tuple[float, list[float], list[float]]:
        loop = asyncio.get_running_loop()
        deadlines = Deadlines()
        owner = Owner()
        at = loop.time() + delay
        deadlines.set(owner, at)
        ref = reference(at, delay / 128)
        await asyncio.sleep(delay + 0.2)
        return at, owner.fired, ref

    at, fired, ref = run(main)
    assert_on_time(fired, at, delay / 128, ref)


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
    async def main() -> tuple[list[float], list[float], float, list[float]]:
        loop = asyncio.get_running_loop()
        deadlines = Deadlines()
        first, late = Owner(), Owner()
        at = loop.time() + 0.02
        deadlines.set(first, at)
        await asyncio.sleep(0.1)
        deadlines.set(late, at)  # the same instant, now past: due at once
        set_at = loop.time()
        ref = reference(set_at, TICK)
        await asyncio.sleep(0.1)
        return first.fired, late.fired, set_at, ref

    first, late, set_at, ref = run(main)
    assert len(first) == 1
    assert_on_time(late, set_at, TICK, ref)


def test_a_short_delay_never_rides_in_the_wider_bucket_a_long_one_chose_for_the_same_instant() -> None:
    async def main() -> tuple[bool, float, list[float], list[float], list[float], list[float]]:
        loop = asyncio.get_running_loop()
        deadlines = Deadlines()
        long_owner, short_owner = Owner(), Owner()
        at = loop.time() + 2.0  # a bucket 2 ticks wide
        deadlines.set(long_owner, at)
        long_ref, short_ref = reference(at, 2 * TICK), reference(at, TICK)
        await asyncio.sleep(1.96)
        deadlines.set(short_owner, at)  # 40 ms ahead now: a bucket 1 tick wide
        apart = short_owner.deadline_bucket is not long_owner.deadline_bucket
        await asyncio.sleep(0.2)
        return apart, at, long_owner.fired, long_ref, short_owner.fired, short_ref

    apart, at, long_fired, long_ref, short_fired, short_ref = run(main)
    assert apart
    assert_on_time(long_fired, at, 2 * TICK, long_ref)
    assert_on_time(short_fired, at, TICK, short_ref)
