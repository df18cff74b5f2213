"""Modes: Observe (the dry run), Disabled, ForceOpen, and switching between them."""

from __future__ import annotations

from breakwater.breaker import ADMITTED, OBSERVED_REJECT, REJECTED, TRIAL, Mode, State

from .conftest import MakeBreaker
from .fakes import Events, FakeClock, fail, settings_with, succeed


def test_observe_mode_admits_what_enforce_would_reject_and_counts_it(
    make_breaker: MakeBreaker, clock: FakeClock
) -> None:
    breaker = make_breaker(mode=Mode.OBSERVE, consecutive_failures=2, half_open_permitted_calls=1)
    fail(breaker, 2)
    assert breaker.state is State.OPEN
    assert [breaker.try_acquire() for _ in range(3)] == [OBSERVED_REJECT] * 3
    snap = breaker.snapshot()
    assert (snap.would_reject, snap.rejections) == (3, 0)
    clock.advance(60)
    assert breaker.try_acquire() == TRIAL
    assert breaker.try_acquire() == OBSERVED_REJECT


def test_observe_mode_runs_the_same_state_machine_as_enforce(
    make_breaker: MakeBreaker, clock: FakeClock
) -> None:
    breaker = make_breaker(mode=Mode.OBSERVE, consecutive_failures=1, half_open_successes_to_close=1)
    fail(breaker)
    clock.advance(60)
    succeed(breaker)
    assert breaker.state is State.CLOSED
    assert breaker.snapshot().trips == 1


def test_disabled_mode_admits_everything_and_stays_closed(make_breaker: MakeBreaker, events: Events) -> None:
    breaker = make_breaker(mode=Mode.DISABLED, consecutive_failures=1)
    assert fail(breaker, 100) == [ADMITTED] * 100
    snap = breaker.snapshot()
    assert (snap.state, snap.trips, snap.failures, snap.window_calls) == (State.CLOSED, 0, 100, 0)
    assert events.items == []


def test_force_open_rejects_everything_forever(make_breaker: MakeBreaker, clock: FakeClock) -> None:
    breaker = make_breaker(mode=Mode.FORCE_OPEN)
    assert breaker.state is State.OPEN
    clock.advance(10**9)
    assert breaker.try_acquire() == REJECTED
    assert breaker.retry_after() == 60.0
    snap = breaker.snapshot()
    assert (snap.state, snap.rejections, snap.trips, snap.open_until) == (State.OPEN, 1, 0, float("inf"))


def test_switching_to_force_open_opens_and_back_closes(make_breaker: MakeBreaker, events: Events) -> None:
    breaker = make_breaker()
    breaker.reconfigure(settings_with(), Mode.FORCE_OPEN)
    assert breaker.try_acquire() == REJECTED
    breaker.reconfigure(settings_with(), Mode.ENFORCE)
    assert breaker.try_acquire() == ADMITTED
    assert [(e.to_state, e.reason) for e in events.items] == [
        (State.OPEN, "ModeChanged"),
        (State.CLOSED, "ModeChanged"),
    ]


def test_disabling_an_open_breaker_closes_it(make_breaker: MakeBreaker, events: Events) -> None:
    breaker = make_breaker(consecutive_failures=1)
    fail(breaker)
    breaker.reconfigure(settings_with(consecutive_failures=1), Mode.DISABLED)
    assert breaker.state is State.CLOSED
    assert events.reasons == ["ConsecutiveFailures", "ModeChanged"]
    breaker.reconfigure(settings_with(consecutive_failures=1), Mode.ENFORCE)
    fail(breaker)
    assert breaker.retry_after() == 60  # the streak started over


def test_switching_enforce_to_observe_keeps_state_and_counters(make_breaker: MakeBreaker) -> None:
    breaker = make_breaker(consecutive_failures=3)
    fail(breaker, 3)
    breaker.try_acquire()
    before = breaker.snapshot()
    breaker.reconfigure(settings_with(consecutive_failures=3), Mode.OBSERVE)
    after = breaker.snapshot()
    assert after.state is State.OPEN
    assert (after.trips, after.rejections, after.open_until) == (
        before.trips,
        before.rejections,
        before.open_until,
    )
    assert breaker.try_acquire() == OBSERVED_REJECT


def test_reconfiguring_thresholds_keeps_the_window_of_the_same_shape(make_breaker: MakeBreaker) -> None:
    breaker = make_breaker(consecutive_failures=None, failure_rate_percent=90, minimum_calls=10)
    fail(breaker, 6)
    succeed(breaker, 4)
    breaker.reconfigure(settings_with(consecutive_failures=None, failure_rate_percent=50, minimum_calls=10))
    assert breaker.snapshot().window_calls == 10
    fail(breaker)
    assert breaker.state is State.OPEN


def test_reconfiguring_the_window_shape_starts_an_empty_window(make_breaker: MakeBreaker) -> None:
    breaker = make_breaker(window_size=100)
    succeed(breaker, 10)
    breaker.reconfigure(settings_with(window_size=50))
    assert breaker.snapshot().window_calls == 0
    assert breaker.snapshot().calls == 10
