from __future__ import annotations

from collections.abc import Callable

import pytest

from breakwater.breaker import Breaker, Mode

from .fakes import Events, FakeClock, settings_with

MakeBreaker = Callable[..., Breaker]


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def events() -> Events:
    return Events()


@pytest.fixture
def make_breaker(clock: FakeClock, events: Events) -> MakeBreaker:
    """Build a breaker on the fake clock with no jitter (rng 0.5) unless the test says otherwise."""

    def make(rng: Callable[[], float] = lambda: 0.5, mode: Mode = Mode.ENFORCE, **changes: object) -> Breaker:
        return Breaker(
            "payments", settings_with(**changes), mode=mode, clock=clock, rng=rng, on_transition=events
        )

    return make
