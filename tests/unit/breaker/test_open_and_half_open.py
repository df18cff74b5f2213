"""Open: how long it stays open; HalfOpen: how trial calls decide between Closed and Open."""

from __future__ import annotations

import pytest

from breakwater.breaker import ADMITTED, REJECTED, TRIAL, Outcome, State

from .conftest import MakeBreaker
from .fakes import Events, FakeClock, call, fail, succeed


def test_an_open_breaker_rejects_until_the_open_duration_elapsed(
    make_breaker: MakeBreaker, clock: FakeClock
) -> None:
    breaker = make_breaker(consecutive_failures=1, open_seconds=60)
    fail(breaker)
    clock.advance(59.999)
    assert breaker.try_acquire() == REJECTED
    assert breaker.retry_after() == pytest.approx(0.001)
    clock.advance(0.001)
    assert breaker.state is State.HALF_OPEN
    assert breaker.retry_after() == 0.0
    assert breaker.try_acquire() == TRIAL


def test_rejections_are_counted(make_breaker: MakeBreaker) -> None:
    breaker = make_breaker(consecutive_failures=1)
    fail(breaker)
    for _ in range(7):
        assert breaker.try_acquire() == REJECTED
    assert breaker.snapshot().rejections == 7


def test_the_half_open_transition_is_stamped_when_it_was_due_not_when_noticed(
    make_breaker: MakeBreaker, clock: FakeClock, events: Events
) -> None:
    breaker = make_breaker(consecutive_failures=1, open_seconds=10)
    fail(breaker)
    opened_at = clock.now
    clock.advance(500)
    assert breaker.state is State.HALF_OPEN
    assert events.items[-1].at == opened_at + 10
    assert breaker.snapshot().state_since == opened_at + 10


def test_half_open_admits_only_the_permitted_number_of_trials(
    make_breaker: MakeBreaker, clock: FakeClock
) -> None:
    breaker = make_breaker(consecutive_failures=1, open_seconds=1, half_open_permitted_calls=2)
    fail(breaker)
    clock.advance(1)
    tokens = [breaker.try_acquire() for _ in range(5)]
    assert tokens == [TRIAL, TRIAL, REJECTED, REJECTED, REJECTED]
    assert breaker.snapshot().trials_in_flight == 2


def test_a_completed_trial_frees_its_permit(make_breaker: MakeBreaker, clock: FakeClock) -> None:
    breaker = make_breaker(
        consecutive_failures=1, open_seconds=1, half_open_permitted_calls=1, half_open_successes_to_close=3
    )
    fail(breaker)
    clock.advance(1)
    first = breaker.try_acquire()
    assert breaker.try_acquire() == REJECTED
    breaker.on_result(first, Outcome.SUCCESS, 0.01)
    assert breaker.try_acquire() == TRIAL


def test_enough_successful_trials_close_the_breaker(
    make_breaker: MakeBreaker, clock: FakeClock, events: Events
) -> None:
    breaker = make_breaker(consecutive_failures=1, open_seconds=1, half_open_successes_to_close=3)
    fail(breaker)
    clock.advance(1)
    succeed(breaker, 2)
    assert breaker.state is State.HALF_OPEN
    succeed(breaker)
    assert breaker.state is State.CLOSED
    assert events.reasons == ["ConsecutiveFailures", "OpenTimeoutElapsed", "TrialsSucceeded"]
    assert breaker.try_acquire() == ADMITTED


def test_closing_starts_a_fresh_window(make_breaker: MakeBreaker, clock: FakeClock) -> None:
    breaker = make_breaker(consecutive_failures=3, open_seconds=1, half_open_successes_to_close=1)
    fail(breaker, 3)
    clock.advance(1)
    succeed(breaker)
    snap = breaker.snapshot()
    assert (snap.window_calls, snap.consecutive_failures, snap.window_failure_rate) == (0, 0, None)
    fail(breaker, 2)
    assert breaker.state is State.CLOSED


def test_a_failed_trial_reopens_the_breaker(
    make_breaker: MakeBreaker, clock: FakeClock, events: Events
) -> None:
    breaker = make_breaker(consecutive_failures=1, open_seconds=1)
    fail(breaker)
    clock.advance(1)
    succeed(breaker)
    fail(breaker)
    assert breaker.state is State.OPEN
    assert events.reasons[-1] == "TrialFailed"


def test_a_slow_trial_reopens_the_breaker_when_the_slow_rule_is_on(
    make_breaker: MakeBreaker, clock: FakeClock, events: Events
) -> None:
    breaker = make_breaker(consecutive_failures=1, open_seconds=1, slow_call_percent=50, slow_call_seconds=1)
    fail(breaker)
    clock.advance(1)
    succeed(breaker, duration=1.5)
    assert breaker.state is State.OPEN
    assert events.reasons[-1] == "TrialSlow"


def test_an_ignored_trial_frees_its_permit_and_decides_nothing(
    make_breaker: MakeBreaker, clock: FakeClock
) -> None:
    breaker = make_breaker(consecutive_failures=1, open_seconds=1, half_open_permitted_calls=1)
    fail(breaker)
    clock.advance(1)
    call(breaker, Outcome.IGNORED)
    snap = breaker.snapshot()
    assert (snap.state, snap.half_open_successes, snap.trials_in_flight) == (State.HALF_OPEN, 0, 0)
    assert breaker.try_acquire() == TRIAL


def test_the_open_duration_grows_by_the_multiplier_up_to_the_maximum(
    make_breaker: MakeBreaker, clock: FakeClock
) -> None:
    breaker = make_breaker(
        consecutive_failures=1, open_seconds=10, backoff_multiplier=2, open_max_seconds=50, jitter=0
    )
    durations = []
    fail(breaker)
    for _ in range(5):
        snap = breaker.snapshot()
        assert snap.open_until is not None
        durations.append(snap.open_until - snap.state_since)
        clock.now = snap.open_until
        fail(breaker)  # the trial fails
    assert durations == [10, 20, 40, 50, 50]


def test_a_clean_close_resets_the_backoff(make_breaker: MakeBreaker, clock: FakeClock) -> None:
    breaker = make_breaker(consecutive_failures=1, open_seconds=10, half_open_successes_to_close=1, jitter=0)
    fail(breaker)
    clock.advance(10)
    fail(breaker)  # second trip in a row: 20 s
    assert breaker.retry_after() == 20
    clock.advance(20)
    succeed(breaker)
    assert breaker.state is State.CLOSED
    fail(breaker)
    assert breaker.retry_after() == 10
    assert breaker.snapshot().open_streak == 1


@pytest.mark.parametrize(("draw", "expected"), [(0.0, 8.0), (0.5, 10.0), (0.999999, 12.0)])
def test_jitter_spreads_the_open_duration_by_the_given_fraction(
    make_breaker: MakeBreaker, draw: float, expected: float
) -> None:
    breaker = make_breaker(rng=lambda: draw, consecutive_failures=1, open_seconds=10, jitter=0.2)
    fail(breaker)
    assert breaker.retry_after() == pytest.approx(expected, abs=1e-4)


def test_jitter_never_takes_the_open_duration_past_the_maximum(make_breaker: MakeBreaker) -> None:
    breaker = make_breaker(
        rng=lambda: 0.99, consecutive_failures=1, open_seconds=100, open_max_seconds=100, jitter=0.5
    )
    fail(breaker)
    assert breaker.retry_after() == 100


def test_a_trial_that_never_answers_reopens_after_the_max_wait(
    make_breaker: MakeBreaker, clock: FakeClock, events: Events
) -> None:
    breaker = make_breaker(
        consecutive_failures=1,
        open_seconds=10,
        half_open_permitted_calls=1,
        half_open_max_wait_seconds=5,
        jitter=0,
    )
    fail(breaker)
    clock.advance(10)
    hung = breaker.try_acquire()
    assert hung == TRIAL
    clock.advance(4.9)
    assert breaker.state is State.HALF_OPEN
    clock.advance(0.1)
    assert breaker.state is State.OPEN
    assert events.reasons[-1] == "HalfOpenMaxWait"
    assert breaker.retry_after() == 20  # backoff: second trip in a row
    clock.advance(20)
    # the hung trial no longer holds the permit of the new half-open episode
    fresh = breaker.try_acquire()
    assert fresh == TRIAL
    assert breaker.try_acquire() == REJECTED
    breaker.on_result(hung, Outcome.SUCCESS, 35.0)  # counted as a stale trial: frees no current permit
    assert breaker.try_acquire() == REJECTED
    breaker.on_result(fresh, Outcome.SUCCESS, 0.1)
    assert breaker.try_acquire() == TRIAL


def test_a_half_open_breaker_without_traffic_waits_for_it(
    make_breaker: MakeBreaker, clock: FakeClock
) -> None:
    breaker = make_breaker(consecutive_failures=1, open_seconds=10, half_open_max_wait_seconds=5)
    fail(breaker)
    clock.advance(1000)
    assert breaker.state is State.HALF_OPEN
    assert breaker.try_acquire() == TRIAL


def test_each_trial_outcome_restarts_the_max_wait(make_breaker: MakeBreaker, clock: FakeClock) -> None:
    breaker = make_breaker(
        consecutive_failures=1,
        open_seconds=10,
        half_open_permitted_calls=2,
        half_open_successes_to_close=3,
        half_open_max_wait_seconds=5,
    )
    fail(breaker)
    clock.advance(10)
    first, second = breaker.try_acquire(), breaker.try_acquire()
    clock.advance(4)
    breaker.on_result(first, Outcome.SUCCESS, 4.0)
    clock.advance(4)
    assert breaker.state is State.HALF_OPEN
    clock.advance(1)
    assert breaker.state is State.OPEN
    breaker.on_result(second, Outcome.SUCCESS, 9.0)
    assert breaker.state is State.OPEN


def test_a_result_arriving_after_the_max_wait_is_judged_after_the_reopen(
    make_breaker: MakeBreaker, clock: FakeClock, events: Events
) -> None:
    breaker = make_breaker(
        consecutive_failures=1, open_seconds=10, half_open_successes_to_close=1, half_open_max_wait_seconds=5
    )
    fail(breaker)
    clock.advance(10)
    token = breaker.try_acquire()
    clock.advance(6)
    breaker.on_result(token, Outcome.SUCCESS, 6.0)
    assert breaker.state is State.OPEN
    assert events.reasons == ["ConsecutiveFailures", "OpenTimeoutElapsed", "HalfOpenMaxWait"]
