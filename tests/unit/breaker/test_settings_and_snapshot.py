"""Settings validation, snapshots, the transition history, and the rejection path's footprint."""

from __future__ import annotations

import gc
import itertools
import tracemalloc

import pytest

from breakwater.breaker import (
    REJECTED,
    Breaker,
    InvalidBreakerSettings,
    Mode,
    Outcome,
    Reason,
    State,
)

from .conftest import MakeBreaker
from .fakes import FakeClock, fail, settings_with, succeed


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("consecutive_failures", 0),
        ("failure_rate_percent", 0),
        ("failure_rate_percent", 101),
        ("slow_call_percent", 50),  # without slow_call_seconds
        ("slow_call_seconds", 0),
        ("minimum_calls", 0),
        ("window_size", 0),
        ("window_seconds", 0),
        ("open_seconds", -1),
        ("open_max_seconds", 1),  # below open_seconds
        ("backoff_multiplier", 0.5),
        ("jitter", 1.0),
        ("jitter", -0.1),
        ("half_open_permitted_calls", 0),
        ("half_open_successes_to_close", 0),
        ("half_open_max_wait_seconds", 0),
        ("open_seconds", float("nan")),
        ("window_size", 100_001),  # the spec's bounds: a count window keeps a slot per call
        ("minimum_calls", 100_001),
        ("consecutive_failures", 10_001),
        ("half_open_permitted_calls", 1001),
    ],
)
def test_settings_the_engine_cannot_run_with_are_refused_naming_the_field(field: str, value: object) -> None:
    """Named as the sidecar config names them (camelCase): that is where a user reads the message."""
    first, *rest = field.split("_")
    with pytest.raises(InvalidBreakerSettings, match=first + "".join(w.capitalize() for w in rest)):
        settings_with(**{field: value})  # type: ignore[arg-type]


def test_invalid_settings_are_value_errors() -> None:
    assert issubclass(InvalidBreakerSettings, ValueError)


def test_a_snapshot_describes_the_breaker(make_breaker: MakeBreaker, clock: FakeClock) -> None:
    breaker = make_breaker(consecutive_failures=3, jitter=0)
    succeed(breaker, 2)
    fail(breaker, 3)
    breaker.try_acquire()
    snap = breaker.snapshot()
    assert snap.name == "payments"
    assert (snap.state, snap.mode) == (State.OPEN, Mode.ENFORCE)
    assert (snap.calls, snap.failures, snap.rejections, snap.trips) == (5, 3, 1, 1)
    assert (snap.window_calls, snap.window_failure_rate, snap.window_slow_rate) == (5, 0.6, 0.0)
    assert snap.open_until == clock.now + 60
    assert snap.state_since == clock.now
    assert [t.reason for t in snap.last_transitions] == ["ConsecutiveFailures"]


def test_transitions_name_the_upstream_and_use_plain_string_reasons(make_breaker: MakeBreaker) -> None:
    breaker = make_breaker(consecutive_failures=1)
    fail(breaker)
    (event,) = breaker.snapshot().last_transitions
    assert event.upstream == "payments"
    assert (event.from_state, event.to_state) == (State.CLOSED, State.OPEN)
    assert type(event.reason) is str
    assert event.reason == Reason.CONSECUTIVE_FAILURES


def test_the_snapshot_keeps_only_the_last_ten_transitions(
    make_breaker: MakeBreaker, clock: FakeClock
) -> None:
    breaker = make_breaker(consecutive_failures=1, open_seconds=1, open_max_seconds=1)
    fail(breaker)
    for _ in range(20):
        clock.advance(1)
        fail(breaker)
    history = breaker.snapshot().last_transitions
    assert len(history) == 10
    assert history[-1].to_state is State.OPEN
    for before, after in itertools.pairwise(history):
        assert after.from_state is before.to_state


def test_a_rejected_token_needs_no_result_and_tolerates_one(make_breaker: MakeBreaker) -> None:
    breaker = make_breaker(consecutive_failures=1)
    fail(breaker)
    token = breaker.try_acquire()
    assert token == REJECTED
    breaker.on_result(token, Outcome.FAILURE, 0.0)
    assert breaker.snapshot().calls == 1


def test_the_settings_property_returns_what_was_configured(make_breaker: MakeBreaker) -> None:
    breaker = make_breaker(window_size=7)
    assert breaker.settings.window_size == 7
    new = settings_with(window_size=9)
    breaker.reconfigure(new)
    assert breaker.settings is new


def test_rejecting_does_not_grow_memory() -> None:
    clock = FakeClock()
    breaker = Breaker("payments", settings_with(), mode=Mode.FORCE_OPEN, clock=clock)
    for _ in range(1000):
        breaker.try_acquire()
    gc.collect()
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        for _ in range(200_000):
            breaker.try_acquire()
        after = tracemalloc.get_traced_memory()[0]
    finally:
        tracemalloc.stop()
    assert after - before < 1024
    assert breaker.snapshot().rejections == 201_000


def test_closed_calls_do_not_grow_memory() -> None:
    clock = FakeClock()
    breaker = Breaker("payments", settings_with(failure_rate_percent=50), clock=clock)
    for _ in range(1000):
        breaker.on_result(breaker.try_acquire(), Outcome.SUCCESS, 0.01)
    gc.collect()
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        for _ in range(100_000):
            breaker.on_result(breaker.try_acquire(), Outcome.SUCCESS, 0.01)
        after = tracemalloc.get_traced_memory()[0]
    finally:
        tracemalloc.stop()
    assert after - before < 1024
