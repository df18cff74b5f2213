"""Property tests: the breaker's invariants hold under any interleaving of calls, results and time."""

from __future__ import annotations

import math

import hypothesis.strategies as st
from hypothesis import given, settings
from hypothesis.stateful import (
    Bundle,
    RuleBasedStateMachine,
    consumes,
    initialize,
    invariant,
    multiple,
    precondition,
    rule,
)

from breakwater.breaker import (
    ADMITTED,
    OBSERVED_REJECT,
    REJECTED,
    TRIAL,
    Breaker,
    BreakerSettings,
    Mode,
    Outcome,
    State,
    Transition,
    WindowKind,
)

from .fakes import FakeClock, settings_with

OUTCOMES = st.sampled_from([Outcome.SUCCESS, Outcome.FAILURE, Outcome.IGNORED])


@st.composite
def breaker_settings(draw: st.DrawFn) -> BreakerSettings:
    open_seconds = draw(st.sampled_from([0.0, 0.5, 1.0, 10.0, 60.0]) | st.floats(0, 100))
    slow = draw(st.none() | st.tuples(st.floats(1, 100), st.floats(0.01, 5)))
    return settings_with(
        consecutive_failures=draw(st.none() | st.integers(1, 6)),
        failure_rate_percent=draw(st.none() | st.floats(1, 100)),
        slow_call_percent=None if slow is None else slow[0],
        slow_call_seconds=None if slow is None else slow[1],
        minimum_calls=draw(st.integers(1, 10)),
        window_kind=draw(st.sampled_from(list(WindowKind))),
        window_size=draw(st.integers(1, 20)),
        window_seconds=draw(st.floats(0.5, 30)),
        open_seconds=open_seconds,
        open_max_seconds=open_seconds + draw(st.sampled_from([0.0, 5.0, 100.0, 1000.0])),
        backoff_multiplier=draw(st.sampled_from([1.0, 1.5, 2.0, 3.0])),
        jitter=draw(st.sampled_from([0.0, 0.2, 0.5, 0.9])),
        half_open_permitted_calls=draw(st.integers(1, 4)),
        half_open_successes_to_close=draw(st.integers(1, 4)),
        half_open_max_wait_seconds=draw(st.none() | st.floats(0.5, 30)),
    )


@given(
    n=st.integers(1, 10),
    outcomes=st.lists(st.sampled_from([Outcome.SUCCESS, Outcome.FAILURE, Outcome.IGNORED]), max_size=60),
)
def test_the_breaker_opens_exactly_on_the_nth_consecutive_failure(n: int, outcomes: list[Outcome]) -> None:
    clock = FakeClock()
    breaker = Breaker("u", settings_with(consecutive_failures=n), clock=clock)
    run = 0
    for outcome in outcomes:
        token = breaker.try_acquire()
        assert token == ADMITTED
        breaker.on_result(token, outcome, 0.01)
        if outcome is Outcome.FAILURE:
            run += 1
        elif outcome is Outcome.SUCCESS:
            run = 0
        assert (breaker.state is State.OPEN) == (run >= n)
        if run >= n:
            return


@given(
    open_seconds=st.floats(0.1, 100),
    extra=st.floats(0, 1000),
    multiplier=st.floats(1, 4),
    jitter=st.floats(0, 0.99),
    draws=st.lists(st.floats(0, 1, exclude_max=True), min_size=1, max_size=30),
)
def test_open_durations_grow_by_the_multiplier_stay_capped_and_reset_on_close(
    open_seconds: float, extra: float, multiplier: float, jitter: float, draws: list[float]
) -> None:
    clock = FakeClock()
    pending = list(draws)
    cap = open_seconds + extra
    breaker = Breaker(
        "u",
        settings_with(
            consecutive_failures=1,
            open_seconds=open_seconds,
            open_max_seconds=cap,
            backoff_multiplier=multiplier,
            jitter=jitter,
            half_open_successes_to_close=1,
        ),
        clock=clock,
        rng=lambda: pending[0],
    )
    breaker.on_result(breaker.try_acquire(), Outcome.FAILURE, 0.0)
    base = open_seconds
    for i, draw in enumerate(draws):
        snap = breaker.snapshot()
        assert snap.open_until is not None
        duration = snap.open_until - snap.state_since
        expected = min(base * (1 + jitter * (2 * draw - 1)), cap)
        assert math.isclose(duration, expected, rel_tol=1e-9, abs_tol=1e-9)
        assert duration <= cap + 1e-9  # (rounding: open_until - state_since)
        clock.now = snap.open_until
        pending.pop(0)
        if not pending:
            return
        token = breaker.try_acquire()
        assert token == TRIAL
        if i % 5 == 4:  # now and then, recover and trip again: the backoff starts over
            breaker.on_result(token, Outcome.SUCCESS, 0.0)
            assert breaker.state is State.CLOSED
            breaker.on_result(breaker.try_acquire(), Outcome.FAILURE, 0.0)
            base = open_seconds
        else:
            breaker.on_result(token, Outcome.FAILURE, 0.0)
            base = min(base * multiplier, cap)


class BreakerMachine(RuleBasedStateMachine):
    """Drives one breaker with arbitrary acquires, results, time steps and mode changes.

    Alongside it keeps a small independent model (built from the transition events) and checks the
    invariants the issue names after every step.
    """

    tokens = Bundle("tokens")

    @initialize(
        config=breaker_settings(),
        mode=st.sampled_from(list(Mode)),
        draws=st.lists(st.floats(0, 1, exclude_max=True), min_size=1),
    )
    def start(self, config: BreakerSettings, mode: Mode, draws: list[float]) -> None:
        self.mode = mode
        self.clock = FakeClock()
        self.draws = draws
        self.draw_index = 0
        self.last_draw = 0.5
        self.events: list[Transition] = []
        self.initial_state = State.OPEN if mode is Mode.FORCE_OPEN else State.CLOSED
        self.model_state = self.initial_state
        self.model_until = math.inf if mode is Mode.FORCE_OPEN else -math.inf
        self.streak = 0
        self.episode = 0  # counts entries into HalfOpen
        self.trials: dict[int, int] = {}  # id -> half-open episode, for trial tokens not yet completed
        self.next_id = 0
        self.run = 0  # consecutive failures of normal calls completed while Closed
        self.rejections = 0
        self.would_reject = 0
        self.completed = 0
        self.failures = 0
        self.mode_changes = 0
        self.breaker = Breaker(
            "u", config, mode=mode, clock=self.clock, rng=self.rng, on_transition=self.on_transition
        )

    def rng(self) -> float:
        self.last_draw = self.draws[self.draw_index % len(self.draws)]
        self.draw_index += 1
        return self.last_draw

    @property
    def config(self) -> BreakerSettings:
        return self.breaker.settings

    def on_transition(self, event: Transition) -> None:
        previous = self.events[-1].to_state if self.events else self.initial_state
        assert event.from_state is previous, (previous, event)
        assert event.from_state is not event.to_state
        if self.events:
            assert event.at >= self.events[-1].at
        assert event.at <= self.clock.now
        self.events.append(event)
        self.model_state = event.to_state
        c = self.config
        if event.to_state is State.OPEN:
            if event.reason == "ModeChanged":
                assert self.mode is Mode.FORCE_OPEN
                self.model_until = math.inf
            else:
                assert self.mode in (Mode.ENFORCE, Mode.OBSERVE)
                self.streak += 1
                # open_seconds * multiplier ** (streak - 1), capped; multiplied step by step like the engine
                # so that the model's float equals the breaker's exactly (the test waits to that instant)
                base = c.open_seconds
                for _ in range(self.streak - 1):
                    base = min(base * c.backoff_multiplier, c.open_max_seconds)
                duration = base * (1 + c.jitter * (2 * self.last_draw - 1)) if c.jitter else base
                self.model_until = event.at + min(max(duration, 0.0), c.open_max_seconds)
        elif event.to_state is State.HALF_OPEN:
            assert event.reason == "OpenTimeoutElapsed"
            assert math.isclose(event.at, self.model_until, rel_tol=1e-9, abs_tol=1e-9)
            self.episode += 1
        else:
            self.streak = 0
            self.run = 0
            self.model_until = -math.inf
        if event.reason == "ConsecutiveFailures":
            assert c.consecutive_failures is not None
            assert self.run >= c.consecutive_failures

    def current_trials(self) -> int:
        return sum(1 for episode in self.trials.values() if episode == self.episode)

    @rule(target=tokens)
    def acquire(self) -> object:
        mode = self.mode
        before = self.model_state
        open_and_waiting = before is State.OPEN and self.clock.now < self.model_until
        token = self.breaker.try_acquire()
        if mode is Mode.FORCE_OPEN:
            assert token == REJECTED
        if mode in (Mode.OBSERVE, Mode.DISABLED):
            assert token != REJECTED
        if mode is Mode.DISABLED:
            assert token == ADMITTED
        if mode is Mode.ENFORCE and open_and_waiting:
            assert token == REJECTED
        if mode is Mode.OBSERVE and open_and_waiting:
            assert token == OBSERVED_REJECT
        if token == TRIAL:
            assert self.model_state is State.HALF_OPEN
        if token == REJECTED:
            self.rejections += 1
            return multiple()
        if token == OBSERVED_REJECT:
            self.would_reject += 1
        self.next_id += 1
        if token == TRIAL:
            self.trials[self.next_id] = self.episode
            assert self.current_trials() <= self.config.half_open_permitted_calls
        return (self.next_id, token, self.model_state)

    @rule()
    def reject_now(self) -> None:
        """The pre-check a proxy asks before the bulkhead: True exactly when `try_acquire` would
        reject, and counted as that rejection."""
        open_and_waiting = self.model_state is State.OPEN and self.clock.now < self.model_until
        expected = self.mode is Mode.FORCE_OPEN or (self.mode is Mode.ENFORCE and open_and_waiting)
        assert self.breaker.reject_now() is expected
        if expected:
            self.rejections += 1

    @rule(held=consumes(tokens), outcome=OUTCOMES, duration=st.sampled_from([0.0, 0.01, 1.0, 10.0]))
    def complete(self, held: tuple[int, int, State], outcome: Outcome, duration: float) -> None:
        ident, token, _ = held
        self.trials.pop(ident, None)
        c = self.config
        counts_in_closed = (
            token == ADMITTED
            and self.model_state is State.CLOSED
            and self.mode in (Mode.ENFORCE, Mode.OBSERVE)
        )
        if counts_in_closed and outcome is Outcome.FAILURE:
            self.run += 1
        elif counts_in_closed and outcome is Outcome.SUCCESS:
            self.run = 0
        if outcome is not Outcome.IGNORED:
            self.completed += 1
            self.failures += outcome is Outcome.FAILURE
        self.breaker.on_result(token, outcome, duration)
        if counts_in_closed and c.consecutive_failures is not None and self.run >= c.consecutive_failures:
            assert self.model_state is State.OPEN
            if self.run == c.consecutive_failures:
                assert self.events[-1].reason == "ConsecutiveFailures"
        if counts_in_closed and c.failure_rate_percent is None and c.slow_call_percent is None:
            limit = c.consecutive_failures
            assert (self.model_state is State.OPEN) == (limit is not None and self.run >= limit)

    @rule(seconds=st.sampled_from([0.001, 0.1, 1.0, 5.0, 30.0, 120.0]) | st.floats(0, 400))
    def wait(self, seconds: float) -> None:
        self.clock.advance(seconds)

    @precondition(lambda self: self.model_state is State.OPEN and math.isfinite(self.model_until))
    @rule(just_before=st.booleans())
    def wait_until_the_open_duration_ends(self, just_before: bool) -> None:
        target = self.model_until - 1e-6 if just_before else self.model_until
        self.clock.now = max(self.clock.now, target)

    @rule(outcomes=st.lists(OUTCOMES, min_size=1, max_size=8), duration=st.sampled_from([0.0, 1.0, 10.0]))
    def a_burst_of_calls_that_complete_at_once(self, outcomes: list[Outcome], duration: float) -> None:
        for outcome in outcomes:
            held = self.acquire()
            if isinstance(held, tuple):
                self.complete(held, outcome, duration)

    @precondition(lambda self: self.mode_changes < 3)
    @rule(mode=st.sampled_from(list(Mode)))
    def change_mode(self, mode: Mode) -> None:
        self.mode_changes += 1
        old = self.mode
        self.mode = mode
        self.breaker.reconfigure(self.config, mode)
        if mode is not old and (mode is Mode.DISABLED or old in (Mode.FORCE_OPEN, Mode.DISABLED)):
            self.run = 0  # documented: a fresh start, with or without a ModeChanged event
            self.streak = 0
        if mode is Mode.FORCE_OPEN:  # already Open by a rule: no event, but now without end
            self.model_until = math.inf

    @invariant()
    def the_breaker_agrees_with_its_events(self) -> None:
        if not hasattr(self, "breaker"):
            return
        snap = self.breaker.snapshot()
        assert snap.state is self.model_state
        assert snap.mode is self.mode
        if self.mode is Mode.DISABLED:
            assert snap.state is State.CLOSED
        if self.mode is Mode.FORCE_OPEN:
            assert snap.state is State.OPEN
            assert snap.open_until == math.inf
        if snap.state is State.OPEN:
            assert snap.open_until is not None
            assert math.isclose(snap.open_until, self.model_until, rel_tol=1e-9, abs_tol=1e-9)
            if math.isfinite(snap.open_until):
                assert snap.open_until - snap.state_since <= self.config.open_max_seconds + 1e-9
                assert snap.open_until > self.clock.now
        if snap.state is State.HALF_OPEN:
            assert snap.trials_in_flight <= self.config.half_open_permitted_calls
            assert self.current_trials() <= self.config.half_open_permitted_calls
        assert (snap.rejections, snap.would_reject) == (self.rejections, self.would_reject)
        assert (snap.calls, snap.failures) == (self.completed, self.failures)
        assert snap.trips == sum(
            1 for e in self.events if e.to_state is State.OPEN and e.reason != "ModeChanged"
        )
        if self.config.window_kind is WindowKind.COUNT:
            assert snap.window_calls <= self.config.window_size
        for rate in (snap.window_failure_rate, snap.window_slow_rate):
            assert rate is None or 0.0 <= rate <= 1.0
        assert snap.last_transitions == tuple(self.events[-10:])


BreakerMachine.TestCase.settings = settings(max_examples=300, stateful_step_count=60, deadline=None)
TestBreakerInvariants = BreakerMachine.TestCase


@given(
    kind=st.sampled_from(list(WindowKind)),
    percent=st.floats(1, 100),
    slow_percent=st.none() | st.floats(1, 100),
    minimum=st.integers(1, 12),
    size=st.integers(1, 15),
    seconds=st.sampled_from([0.5, 1.0, 3.0, 10.0, 12.5, 30.0]),
    steps=st.lists(
        st.tuples(st.sampled_from([0.0, 0.0, 0.05, 0.3, 1.0, 2.5, 7.0, 40.0]), st.booleans(), st.booleans()),
        max_size=80,
    ),
    peeks=st.booleans(),
)
def test_the_rate_rules_trip_exactly_when_a_brute_force_window_says_so(
    kind: WindowKind,
    percent: float,
    slow_percent: float | None,
    minimum: int,
    size: int,
    seconds: float,
    steps: list[tuple[float, bool, bool]],
    peeks: bool,
) -> None:
    clock = FakeClock(start=0.0)
    config = settings_with(
        consecutive_failures=None,
        failure_rate_percent=percent,
        slow_call_percent=slow_percent,
        slow_call_seconds=1.0,
        minimum_calls=minimum,
        window_kind=kind,
        window_size=size,
        window_seconds=seconds,
    )
    breaker = Breaker("u", config, clock=clock)
    n_buckets = min(max(math.ceil(seconds), 10), 1000)
    width = seconds / n_buckets
    records: list[tuple[float, bool, bool]] = []  # (time, failed, slow)
    for dt, failed, slow in steps:
        clock.advance(dt)
        if peeks:  # reading the breaker must not change what it decides
            breaker.snapshot()
        token = breaker.try_acquire()
        assert token == ADMITTED
        breaker.on_result(token, Outcome.FAILURE if failed else Outcome.SUCCESS, 1.5 if slow else 0.1)
        records.append((clock.now, failed, slow))
        if kind is WindowKind.COUNT:
            window = records[-size:]
            needed = min(minimum, size)
        else:
            newest = math.floor(clock.now / width)
            window = [r for r in records if math.floor(r[0] / width) > newest - n_buckets]
            needed = minimum
        calls = len(window)
        failures = sum(1 for r in window if r[1])
        slows = sum(1 for r in window if r[2])
        should_trip = calls >= needed and (
            failures * 100.0 >= percent * calls
            or (slow_percent is not None and slows * 100.0 >= slow_percent * calls)
        )
        assert (breaker.state is State.OPEN) == should_trip, (calls, failures, slows)
        if should_trip:
            return
        snap = breaker.snapshot()
        assert snap.window_calls == calls
        assert snap.window_failure_rate == (failures / calls if calls else None)
