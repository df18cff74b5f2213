"""Closed: which calls trip the breaker, and which do not."""

from __future__ import annotations

import pytest

from breakwater.breaker import ADMITTED, REJECTED, Outcome, State, WindowKind

from .conftest import MakeBreaker
from .fakes import Events, FakeClock, call, fail, succeed


def test_a_new_breaker_is_closed_and_admits_calls(make_breaker: MakeBreaker) -> None:
    breaker = make_breaker()
    assert breaker.state is State.CLOSED
    assert breaker.try_acquire() == ADMITTED


def test_the_fifth_consecutive_failure_opens_the_breaker(make_breaker: MakeBreaker, events: Events) -> None:
    breaker = make_breaker(consecutive_failures=5)
    fail(breaker, 4)
    assert breaker.state is State.CLOSED
    fail(breaker)
    assert breaker.state is State.OPEN
    assert events.reasons == ["ConsecutiveFailures"]
    assert breaker.try_acquire() == REJECTED


def test_a_success_resets_the_consecutive_failure_count(make_breaker: MakeBreaker) -> None:
    breaker = make_breaker(consecutive_failures=3)
    fail(breaker, 2)
    succeed(breaker)
    fail(breaker, 2)
    assert breaker.state is State.CLOSED
    assert breaker.snapshot().consecutive_failures == 2


def test_ignored_outcomes_neither_count_nor_reset_failures(make_breaker: MakeBreaker) -> None:
    breaker = make_breaker(consecutive_failures=3)
    fail(breaker, 2)
    call(breaker, Outcome.IGNORED)
    assert breaker.snapshot().consecutive_failures == 2
    assert breaker.snapshot().ignored == 1
    assert breaker.snapshot().calls == 2
    fail(breaker)
    assert breaker.state is State.OPEN


def test_consecutive_failures_none_switches_that_rule_off(make_breaker: MakeBreaker) -> None:
    breaker = make_breaker(consecutive_failures=None)
    fail(breaker, 1000)
    assert breaker.state is State.CLOSED


@pytest.mark.parametrize("kind", [WindowKind.COUNT, WindowKind.TIME])
def test_the_failure_rate_is_not_judged_before_the_minimum_number_of_calls(
    make_breaker: MakeBreaker, kind: WindowKind
) -> None:
    breaker = make_breaker(
        consecutive_failures=None, failure_rate_percent=50, minimum_calls=10, window_kind=kind
    )
    fail(breaker, 9)
    assert breaker.state is State.CLOSED
    fail(breaker)
    assert breaker.state is State.OPEN
    assert breaker.snapshot().last_transitions[-1].reason == "FailureRate"


@pytest.mark.parametrize("kind", [WindowKind.COUNT, WindowKind.TIME])
def test_reaching_the_minimum_with_a_success_still_trips_an_already_high_rate(
    make_breaker: MakeBreaker, kind: WindowKind
) -> None:
    breaker = make_breaker(
        consecutive_failures=None, failure_rate_percent=50, minimum_calls=10, window_kind=kind
    )
    fail(breaker, 6)
    succeed(breaker, 3)
    assert breaker.state is State.CLOSED
    succeed(breaker)  # 6 of 10 failed
    assert breaker.state is State.OPEN


def test_a_failure_rate_below_the_threshold_keeps_the_breaker_closed(make_breaker: MakeBreaker) -> None:
    breaker = make_breaker(
        consecutive_failures=None, failure_rate_percent=50, minimum_calls=10, window_size=10
    )
    for _ in range(100):
        fail(breaker)
        succeed(breaker, 2)
    assert breaker.state is State.CLOSED
    rate = breaker.snapshot().window_failure_rate
    assert rate is not None
    assert 0.3 <= rate <= 0.4


def test_the_count_window_forgets_calls_older_than_its_size(make_breaker: MakeBreaker) -> None:
    breaker = make_breaker(consecutive_failures=None, failure_rate_percent=50, minimum_calls=4, window_size=4)
    fail(breaker)
    succeed(breaker, 3)
    fail(breaker)  # the first failure left the window: 1 of 4
    snap = breaker.snapshot()
    assert (snap.window_calls, snap.window_failure_rate) == (4, 0.25)
    fail(breaker)  # 2 of 4
    assert breaker.state is State.OPEN


def test_a_minimum_above_the_count_window_size_means_a_full_window(make_breaker: MakeBreaker) -> None:
    breaker = make_breaker(
        consecutive_failures=None, failure_rate_percent=100, minimum_calls=50, window_size=5
    )
    fail(breaker, 5)
    assert breaker.state is State.OPEN


def test_the_time_window_forgets_calls_older_than_its_seconds(
    make_breaker: MakeBreaker, clock: FakeClock
) -> None:
    breaker = make_breaker(
        consecutive_failures=None,
        failure_rate_percent=50,
        minimum_calls=5,
        window_kind=WindowKind.TIME,
        window_seconds=10,
    )
    fail(breaker, 4)
    clock.advance(11)
    assert breaker.snapshot().window_calls == 0
    assert breaker.snapshot().window_failure_rate is None
    succeed(breaker, 10)
    fail(breaker, 4)
    assert breaker.state is State.CLOSED
    clock.advance(5)
    fail(breaker, 10)  # reaches 14 of 24 in the last 10 s
    assert breaker.state is State.OPEN


def test_the_time_window_slides_bucket_by_bucket(make_breaker: MakeBreaker, clock: FakeClock) -> None:
    breaker = make_breaker(consecutive_failures=None, window_kind=WindowKind.TIME, window_seconds=10)
    clock.now = 1000.5
    for second in range(10):
        if second:
            clock.advance(1)
        succeed(breaker)
    assert breaker.snapshot().window_calls == 10  # calls at 1000.5 .. 1009.5, now 1009.5
    clock.advance(3)
    assert breaker.snapshot().window_calls == 7  # those at 1003.5 .. 1009.5 are within 10 s


def test_many_slow_calls_trip_the_slow_call_rule(make_breaker: MakeBreaker) -> None:
    breaker = make_breaker(
        consecutive_failures=None, slow_call_percent=80, slow_call_seconds=2.0, minimum_calls=10
    )
    succeed(breaker, 2, duration=0.1)
    succeed(breaker, 7, duration=2.5)
    assert breaker.state is State.CLOSED
    succeed(breaker, 1, duration=2.0)  # 8 of 10 took >= 2 s
    assert breaker.state is State.OPEN
    assert breaker.snapshot().last_transitions[-1].reason == "SlowCallRate"
    assert breaker.snapshot().slow_calls == 8


def test_slow_calls_are_counted_even_without_the_slow_rate_rule(make_breaker: MakeBreaker) -> None:
    breaker = make_breaker(slow_call_seconds=1.0)
    succeed(breaker, 3, duration=1.5)
    fail(breaker, 1, duration=1.5)
    snap = breaker.snapshot()
    assert (snap.slow_calls, snap.window_slow_rate, snap.state) == (4, 1.0, State.CLOSED)


def test_consecutive_failures_are_checked_before_the_failure_rate(make_breaker: MakeBreaker) -> None:
    breaker = make_breaker(consecutive_failures=3, failure_rate_percent=50, minimum_calls=3)
    fail(breaker, 3)
    assert breaker.snapshot().last_transitions[-1].reason == "ConsecutiveFailures"


def test_totals_count_every_completed_call(make_breaker: MakeBreaker) -> None:
    breaker = make_breaker(consecutive_failures=2)
    succeed(breaker, 3)
    fail(breaker, 2)
    call(breaker)  # rejected
    snap = breaker.snapshot()
    assert (snap.calls, snap.failures, snap.rejections, snap.trips) == (5, 2, 1, 1)


def test_calls_admitted_before_the_trip_complete_without_changing_the_state(
    make_breaker: MakeBreaker,
) -> None:
    breaker = make_breaker(consecutive_failures=2)
    slow_token = breaker.try_acquire()
    fail(breaker, 2)
    assert breaker.state is State.OPEN
    breaker.on_result(slow_token, Outcome.SUCCESS, 5.0)
    assert breaker.state is State.OPEN
    assert breaker.snapshot().calls == 3


def test_a_success_trips_the_time_window_once_older_successes_expired(
    make_breaker: MakeBreaker, clock: FakeClock
) -> None:
    breaker = make_breaker(
        consecutive_failures=None,
        failure_rate_percent=50,
        minimum_calls=5,
        window_kind=WindowKind.TIME,
        window_seconds=10,
    )
    succeed(breaker, 20)
    clock.advance(5)
    fail(breaker, 4)  # 4 of 24
    clock.advance(6)  # the 20 successes leave the window
    snap = breaker.snapshot()
    assert (snap.state, snap.window_calls, snap.window_failure_rate) == (State.CLOSED, 4, 1.0)
    succeed(breaker)  # 4 of 5
    assert breaker.state is State.OPEN
