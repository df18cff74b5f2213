"""Test doubles for the breaker: a clock the test moves, and helpers to run calls through a breaker."""

from __future__ import annotations

import dataclasses
from typing import Any

from breakwater.breaker import REJECTED, Breaker, BreakerSettings, Outcome, Transition, WindowKind


class FakeClock:
    """Monotonic seconds that only move when the test says so."""

    def __init__(self, start: float = 1000.0) -> None:
        self.now = start

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


class Events:
    """Collects transition events, and checks each one starts where the previous one ended."""

    def __init__(self) -> None:
        self.items: list[Transition] = []

    def __call__(self, event: Transition) -> None:
        if self.items:
            assert event.from_state is self.items[-1].to_state, (self.items[-1], event)
            assert event.at >= self.items[-1].at
        self.items.append(event)

    @property
    def reasons(self) -> list[str]:
        return [e.reason for e in self.items]


def call(breaker: Breaker, outcome: Outcome = Outcome.SUCCESS, duration: float = 0.01) -> int:
    """One complete protected call: acquire and, unless rejected, report `outcome`."""
    token = breaker.try_acquire()
    if token != REJECTED:
        breaker.on_result(token, outcome, duration)
    return token


def fail(breaker: Breaker, times: int = 1, duration: float = 0.01) -> list[int]:
    return [call(breaker, Outcome.FAILURE, duration) for _ in range(times)]


def succeed(breaker: Breaker, times: int = 1, duration: float = 0.01) -> list[int]:
    return [call(breaker, Outcome.SUCCESS, duration) for _ in range(times)]


# The settings the engine tests start from, written out in full: the engine has no defaults of its own
# (the policy's defaults live in api/spec.py), and these tests pin the values they reason about.
BASE = BreakerSettings(
    consecutive_failures=5,
    failure_rate_percent=None,
    slow_call_percent=None,
    slow_call_seconds=None,
    minimum_calls=20,
    window_kind=WindowKind.COUNT,
    window_size=100,
    window_seconds=30.0,
    open_seconds=60.0,
    open_max_seconds=300.0,
    backoff_multiplier=2.0,
    jitter=0.2,
    half_open_permitted_calls=3,
    half_open_successes_to_close=3,
    half_open_max_wait_seconds=None,
)


def settings_with(**changes: Any) -> BreakerSettings:
    """`BASE` with `changes`; the engine validates the result as it would any settings."""
    return dataclasses.replace(BASE, **changes)
