"""The sidecar's own clock ends an override at modeUntil; a fleet quorum holds only untripped breakers."""

from __future__ import annotations

from breakwater.api.plain.fields import Errors
from breakwater.api.plain.parse import read_upstream
from breakwater.api.plain.sidecar import PlainUpstreamConfig
from breakwater.breaker import Breaker, Mode, Outcome, State
from breakwater.proxy.modeclock import ModeClock, applied_mode, mode_at


def config(**fields: object) -> PlainUpstreamConfig:
    errors = Errors()
    up = read_upstream(errors, (), {"name": "payments", "host": "127.0.0.1", "port": 8080, **fields})
    assert not errors.records
    assert isinstance(up, PlainUpstreamConfig)
    return up


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def breaker(cfg: PlainUpstreamConfig, clock: Clock, mode: Mode | None = None) -> Breaker:
    return Breaker("payments", cfg.breaker, mode=mode or cfg.mode, clock=clock)


def test_the_override_mode_holds_until_its_end_then_the_spec_mode() -> None:
    cfg = config(mode="ForceOpen", modeUntil=2000.0, modeAfter="Enforce")
    assert mode_at(cfg, 1999.9) is Mode.FORCE_OPEN
    assert mode_at(cfg, 2000.0) is Mode.ENFORCE
    assert mode_at(config(mode="Observe"), 1e12) is Mode.OBSERVE


def test_the_clock_ends_the_override_on_time_by_itself() -> None:
    wall, clock = Clock(), Clock()
    cfg = config(mode="ForceOpen", modeUntil=1010.0, modeAfter="Enforce")
    b = breaker(cfg, clock)
    ticker = ModeClock(lambda: [(cfg, b)], wall=wall)
    assert b.state is State.OPEN
    assert ticker.tick() == 1.0  # sleeps at most a second
    wall.now = 1009.5
    assert ticker.tick() == 0.5  # and wakes at the end
    assert b.mode is Mode.FORCE_OPEN
    wall.now = 1010.0
    ticker.tick()
    assert b.mode is Mode.ENFORCE
    assert b.state is State.CLOSED  # leaving ForceOpen is a fresh Closed start


def test_a_sidecar_started_after_the_end_never_enters_the_override() -> None:
    cfg = config(mode="ForceOpen", modeUntil=500.0, modeAfter="Observe")
    assert applied_mode(cfg, None, now=1000.0) is Mode.OBSERVE


def test_a_fleet_hold_forces_open_the_breakers_that_did_not_trip_and_lets_the_tripped_ones_probe() -> None:
    clock = Clock()
    held = config(fleetOpen=True, breaker={"consecutiveFailures": 1})
    closed = breaker(held, clock, Mode.ENFORCE)
    tripped = breaker(held, clock, Mode.ENFORCE)
    tripped.on_result(tripped.try_acquire(), Outcome.FAILURE, 0.01)
    assert tripped.state is State.OPEN
    assert applied_mode(held, None, now=0) is Mode.FORCE_OPEN  # a new pod joins held
    assert applied_mode(held, closed, now=0) is Mode.FORCE_OPEN
    assert applied_mode(held, tripped, now=0) is Mode.ENFORCE
    closed.reconfigure(closed.settings, Mode.FORCE_OPEN)
    assert applied_mode(held, closed, now=0) is Mode.FORCE_OPEN  # stays held on a re-apply
    assert applied_mode(config(fleetOpen=True, mode="Observe"), None, now=0) is Mode.OBSERVE
    assert applied_mode(config(), closed, now=0) is Mode.ENFORCE  # released: a fresh start
