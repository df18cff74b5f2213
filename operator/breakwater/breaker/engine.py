"""The breaker: one upstream's state machine, O(1) per call, with time and randomness passed in.

How a caller uses it (the proxy, once per request)::

    token = breaker.try_acquire()
    if token == REJECTED:
        ...answer 503 / the fallback, with Retry-After: breaker.retry_after()...
    else:
        ...call the upstream, classify the result...
        breaker.on_result(token, Outcome.SUCCESS, duration)   # exactly once per admitted token

Design notes (the decisions the interface leaves open):

- Nothing runs by itself: there are no timers. Time-driven transitions (Open -> HalfOpen once the open
  duration elapsed, HalfOpen -> Open once the half-open max wait elapsed) are applied lazily by whatever
  looks next (`try_acquire`, `on_result` of a trial, `state`, `snapshot`, `retry_after`,
  `reconfigure`), stamped with the time they logically happened.
- Closed is the hot path: `try_acquire` reads one flag and returns an int; `on_result` updates a few
  counters and a ring buffer (count window) or a ring of per-time buckets (time window). Neither
  raises, neither allocates beyond CPython's int arithmetic; a rejection likewise.
- A time window of W seconds is a ring of ``min(max(ceil(W), 10), 1000)`` equal buckets (1 s each for
  10 s <= W <= 1000 s): it holds the calls of the current bucket and of the buckets before it, so its
  edge moves one bucket at a time. Reading it (`snapshot`) never changes it.
- Trip rules, in order: consecutive failures, failure rate, slow-call rate. The rate rules look at the
  window only once it holds ``minimum_calls`` calls (a count window: ``min(minimum_calls,
  window_size)``). A slow call is one that took ``>= slow_call_seconds``, successful or not.
- The window and the consecutive-failure count stay as they were while Open/HalfOpen (so a snapshot
  shows what tripped the breaker) and are emptied when the breaker closes. Calls that complete while
  the breaker is not Closed (admitted before it tripped, or admitted by Observe mode) count in the
  totals only.
- Open duration: ``open_seconds * backoff_multiplier ** (streak - 1)`` where ``streak`` counts trips
  since the last close, capped at ``open_max_seconds``, then jittered by ``+-jitter`` and clamped to
  ``open_max_seconds`` again (maxDuration is a hard ceiling). A close (trials succeeded, or a mode
  change) resets the streak.
- HalfOpen admits at most ``half_open_permitted_calls`` trials in flight. Trial permits are accounted
  per half-open episode: trials still in flight when the episode ends are "stale"; a later trial result
  is first attributed to stale trials, which can only make the count of current trials too high, never
  too low, so the limit holds for the trials of the current episode whatever the interleaving. A trial
  result that arrives while HalfOpen is evidence about the upstream and counts, whichever episode
  admitted it. A failed trial re-opens (``TrialFailed``); so does a slow one when the slow-call rule is
  on (``TrialSlow``); an ``IGNORED`` trial only frees its permit.
- ``half_open_max_wait_seconds`` guards against trials that never answer: from the moment a trial is
  admitted while none is pending, and again after every trial outcome while trials remain in flight,
  if no trial outcome arrives within the wait the breaker re-opens (``HalfOpenMaxWait``, with backoff).
  A HalfOpen breaker with no traffic at all stays HalfOpen (it has nothing to wait for).
- Modes: Observe runs the state machine exactly like Enforce and hands out `OBSERVED_REJECT` where
  Enforce would hand out `REJECTED`. Disabled admits everything, counts totals only and is Closed.
  ForceOpen is Open with no end: everything is `REJECTED`; `retry_after` then says ``open_seconds``.
- `reconfigure`: counters, state and streak are kept. The window is kept when its shape
  (kind and size/seconds) is unchanged, otherwise it restarts empty. The current open period keeps
  its end; the next one uses the new durations. Mode changes: Enforce <-> Observe change nothing else;
  entering ForceOpen opens (``ModeChanged``); entering Disabled, or leaving ForceOpen or Disabled for
  Enforce/Observe, closes (``ModeChanged``) with an empty window and no streak.
- Not thread-safe: one breaker belongs to one event loop (or one lock).
- ``on_transition`` is called synchronously after the breaker reached its new state (so it may read
  it); an exception from it propagates to the caller of the method that noticed the transition.
"""

from __future__ import annotations

import math
import random
from collections import deque
from collections.abc import Callable
from typing import Final

from breakwater.breaker.events import BreakerSnapshot, Outcome, Reason, Transition
from breakwater.breaker.settings import BreakerSettings, Mode, State, WindowKind

__all__ = ["ADMITTED", "OBSERVED_REJECT", "REJECTED", "TRIAL", "Breaker"]

# Admission tokens: plain ints so the hot path returns a cached small int (no allocation).
ADMITTED: Final = 0
"""A normal call: go ahead."""
TRIAL: Final = 1
"""A half-open trial call: go ahead, its outcome decides whether the breaker closes."""
OBSERVED_REJECT: Final = 2
"""Observe mode: Enforce would have rejected this call; it is admitted anyway."""
REJECTED: Final = 3
"""Do not call the upstream (answer 503 / the fallback). Needs no `on_result`."""

_CLOSED: Final = 0
_OPEN: Final = 1
_HALF_OPEN: Final = 2
_STATES: Final = (State.CLOSED, State.OPEN, State.HALF_OPEN)

_SUCCESS: Final = Outcome.SUCCESS
_FAILURE: Final = Outcome.FAILURE
_IGNORED: Final = Outcome.IGNORED

# Window codes: one small int per recorded call.
_FAILED: Final = 1
_SLOW: Final = 2

_INF: Final = math.inf
_TRANSITION_HISTORY: Final = 10
_MIN_TIME_BUCKETS: Final = 10
_MAX_TIME_BUCKETS: Final = 1000


class Breaker:
    """One upstream's circuit breaker. See the module docstring for the exact semantics."""

    __slots__ = (
        "_calls",
        "_clock",
        "_closed",
        "_consec_limit",
        "_consecutive",
        "_count_window",
        "_fail_pct",
        "_failures",
        "_half_deadline",
        "_half_successes",
        "_ignored",
        "_max_wait",
        "_min_calls",
        "_mode",
        "_name",
        "_next_base",
        "_observe",
        "_on_transition",
        "_open_until",
        "_permitted",
        "_recording",
        "_rejections",
        "_ring",
        "_ring_i",
        "_ring_n",
        "_rng",
        "_settings",
        "_slow_calls",
        "_slow_pct",
        "_slow_rule",
        "_slow_s",
        "_st",
        "_stale_trials",
        "_state_since",
        "_streak",
        "_tb_calls",
        "_tb_end",
        "_tb_fail",
        "_tb_head",
        "_tb_i",
        "_tb_n",
        "_tb_slow",
        "_tb_start",
        "_tb_width",
        "_to_close",
        "_transitions",
        "_trials",
        "_trips",
        "_wcalls",
        "_wfail",
        "_would_reject",
        "_wslow",
    )

    # Declared here because they are (re)built by helpers, not only in __init__.
    _count_window: bool
    _ring: list[int]
    _ring_i: int
    _ring_n: int
    _wcalls: int
    _wfail: int
    _wslow: int
    _tb_n: int
    _tb_width: float
    _tb_head: int
    _tb_i: int
    _tb_start: float
    _tb_end: float
    _tb_calls: list[int]
    _tb_fail: list[int]
    _tb_slow: list[int]
    _consec_limit: float
    _fail_pct: float
    _slow_pct: float
    _slow_s: float
    _slow_rule: bool
    _min_calls: int
    _permitted: int
    _to_close: int
    _max_wait: float | None

    def __init__(
        self,
        name: str,
        settings: BreakerSettings,
        *,
        mode: Mode = Mode.ENFORCE,
        clock: Callable[[], float],
        rng: Callable[[], float] = random.random,
        on_transition: Callable[[Transition], None] | None = None,
    ) -> None:
        self._name = name
        self._clock = clock
        self._rng = rng
        self._on_transition = on_transition
        self._transitions: deque[Transition] = deque(maxlen=_TRANSITION_HISTORY)

        self._calls = 0
        self._failures = 0
        self._slow_calls = 0
        self._ignored = 0
        self._rejections = 0
        self._would_reject = 0
        self._trips = 0
        self._consecutive = 0

        self._st = _CLOSED
        self._state_since = clock()
        self._open_until = 0.0
        self._streak = 0
        self._trials = 0
        self._stale_trials = 0
        self._half_successes = 0
        self._half_deadline: float | None = None

        self._settings = settings
        self._apply_parameters(settings)
        self._next_base = settings.open_seconds
        self._new_window(settings)
        self._mode = mode
        self._observe = mode is Mode.OBSERVE
        if mode is Mode.FORCE_OPEN:
            self._st = _OPEN
            self._open_until = _INF
        self._closed = self._st == _CLOSED
        self._recording = self._closed and mode in (Mode.ENFORCE, Mode.OBSERVE)

    # ----------------------------------------------------------------------------------------------
    # The per-call API
    # ----------------------------------------------------------------------------------------------

    def try_acquire(self) -> int:
        """Decide about one call: `ADMITTED`, `TRIAL`, `OBSERVED_REJECT` or `REJECTED`. Never raises."""
        if self._closed:
            return 0  # ADMITTED
        if self._st == 1 and self._clock() < self._open_until:  # Open, not yet elapsed
            if self._observe:
                self._would_reject += 1
                return 2  # OBSERVED_REJECT
            self._rejections += 1
            return 3  # REJECTED
        return self._acquire_slow()

    def reject_now(self) -> bool:
        """True, counted as a rejection, when `try_acquire` would answer `REJECTED` (Open, enforcing,
        not yet due for a trial). Asked before a call takes a bulkhead slot or a share of the retry
        budget: an open breaker sheds load before anything else is spent on it."""
        if self._closed or self._observe or self._st != 1 or self._clock() >= self._open_until:
            return False
        self._rejections += 1
        return True

    def on_result(self, token: int, outcome: Outcome, duration: float) -> None:
        """Record how an admitted call ended (``duration`` in seconds). Once per admitted token."""
        if token or not self._recording:
            self._on_other_result(token, outcome, duration)
            return
        # Closed, Enforce or Observe, a normal call: the hot path.
        if outcome is _SUCCESS:
            self._calls += 1
            self._consecutive = 0
            if duration < self._slow_s:
                code = 0
            else:
                code = 2
                self._slow_calls += 1
        elif outcome is _FAILURE:
            self._calls += 1
            self._failures += 1
            self._consecutive += 1
            if duration < self._slow_s:
                code = 1
            else:
                code = 3
                self._slow_calls += 1
        else:
            self._ignored += 1
            return
        if self._count_window:
            ring = self._ring
            i = self._ring_i
            old = ring[i]
            ring[i] = code
            i += 1
            self._ring_i = 0 if i == self._ring_n else i
            if old:
                if old & 1:
                    self._wfail -= 1
                if old & 2:
                    self._wslow -= 1
            if code:
                if code & 1:
                    self._wfail += 1
                if code & 2:
                    self._wslow += 1
            wcalls = self._wcalls
            if wcalls < self._ring_n:
                wcalls += 1
                self._wcalls = wcalls
            if code or wcalls == self._min_calls:
                self._evaluate(code, None)
        else:
            now = self._clock()
            if self._tb_start <= now < self._tb_end:
                expired = False
            else:
                self._advance_time_window(math.floor(now / self._tb_width))
                expired = True
            i = self._tb_i
            self._tb_calls[i] += 1
            wcalls = self._wcalls + 1
            self._wcalls = wcalls
            if code:
                if code & 1:
                    self._tb_fail[i] += 1
                    self._wfail += 1
                if code & 2:
                    self._tb_slow[i] += 1
                    self._wslow += 1
            # A rate can only have risen if this call failed or was slow, if old buckets expired, or if
            # the window just reached its minimum: otherwise there is nothing to evaluate.
            if code or expired or wcalls == self._min_calls:
                self._evaluate(code, now)

    def retry_after(self) -> float:
        """Seconds until the breaker would admit a trial; 0 unless Open (``open_seconds`` if forced)."""
        now = self._clock()
        self._tick(now)
        if self._st != _OPEN:
            return 0.0
        if self._open_until == _INF:
            return self._settings.open_seconds
        return max(0.0, self._open_until - now)

    # ----------------------------------------------------------------------------------------------
    # Inspection and configuration
    # ----------------------------------------------------------------------------------------------

    @property
    def name(self) -> str:
        return self._name

    @property
    def state(self) -> State:
        self._tick(self._clock())
        return _STATES[self._st]

    @property
    def settings(self) -> BreakerSettings:
        return self._settings

    @property
    def mode(self) -> Mode:
        return self._mode

    def snapshot(self) -> BreakerSnapshot:
        """A consistent copy of the breaker's figures at the clock's current time."""
        now = self._clock()
        self._tick(now)
        wcalls, wfail, wslow = self._window_figures(now)
        return BreakerSnapshot(
            name=self._name,
            state=_STATES[self._st],
            mode=self._mode,
            calls=self._calls,
            failures=self._failures,
            slow_calls=self._slow_calls,
            rejections=self._rejections,
            would_reject=self._would_reject,
            trips=self._trips,
            consecutive_failures=self._consecutive,
            window_calls=wcalls,
            window_failure_rate=wfail / wcalls if wcalls else None,
            window_slow_rate=wslow / wcalls if wcalls else None,
            open_until=self._open_until if self._st == _OPEN else None,
            last_transitions=tuple(self._transitions),
            state_since=self._state_since,
            ignored=self._ignored,
            trials_in_flight=self._trials,
            half_open_successes=self._half_successes,
            open_streak=self._streak,
        )

    def reconfigure(self, settings: BreakerSettings, mode: Mode | None = None) -> None:
        """Adopt new settings (and a new mode, if given), keeping what still applies (see the module
        docstring)."""
        old = self._settings
        now = self._clock()
        self._tick(now)
        self._settings = settings
        self._apply_parameters(settings)
        if not old.same_window(settings):
            self._new_window(settings)
        self._next_base = self._base_after(self._streak)
        if mode is not None and mode is not self._mode:
            self._change_mode(self._mode, mode, now)

    # ----------------------------------------------------------------------------------------------
    # Internals
    # ----------------------------------------------------------------------------------------------

    def _apply_parameters(self, s: BreakerSettings) -> None:
        self._consec_limit = _INF if s.consecutive_failures is None else s.consecutive_failures
        self._fail_pct = _INF if s.failure_rate_percent is None else s.failure_rate_percent
        self._slow_pct = _INF if s.slow_call_percent is None else s.slow_call_percent
        self._slow_s = _INF if s.slow_call_seconds is None else s.slow_call_seconds
        self._slow_rule = s.slow_call_percent is not None
        self._min_calls = (
            min(s.minimum_calls, s.window_size) if s.window_kind is WindowKind.COUNT else s.minimum_calls
        )
        self._permitted = s.half_open_permitted_calls
        self._to_close = s.half_open_successes_to_close
        self._max_wait = s.half_open_max_wait_seconds

    def _new_window(self, s: BreakerSettings) -> None:
        self._wcalls = 0
        self._wfail = 0
        self._wslow = 0
        self._count_window = s.window_kind is WindowKind.COUNT
        if self._count_window:
            self._ring_n = s.window_size
            self._ring = [0] * s.window_size
            self._ring_i = 0
            self._tb_n = 0
            self._tb_width = 1.0
            self._tb_calls = []
            self._tb_fail = []
            self._tb_slow = []
        else:
            n = min(max(math.ceil(s.window_seconds), _MIN_TIME_BUCKETS), _MAX_TIME_BUCKETS)
            self._ring_n = 0
            self._ring = []
            self._ring_i = 0
            self._tb_n = n
            self._tb_width = s.window_seconds / n
            self._tb_calls = [0] * n
            self._tb_fail = [0] * n
            self._tb_slow = [0] * n
        self._tb_head = -(2**62)
        self._tb_i = 0
        self._tb_start = _INF  # the current bucket covers [start, end): none yet
        self._tb_end = -_INF

    def _clear_window(self) -> None:
        if self._wcalls == 0:
            return
        self._wcalls = self._wfail = self._wslow = 0
        if self._count_window:
            ring = self._ring
            for i in range(self._ring_n):
                ring[i] = 0
            self._ring_i = 0
        else:
            for i in range(self._tb_n):
                self._tb_calls[i] = self._tb_fail[i] = self._tb_slow[i] = 0

    def _window_figures(self, now: float) -> tuple[int, int, int]:
        """(calls, failures, slow calls) in the window as of `now`, without changing it.

        Reading must not expire buckets: the hot path relies on expiry happening only when it records
        a call, so that it can re-evaluate the rates exactly when they may have risen.
        """
        if self._count_window:
            return self._wcalls, self._wfail, self._wslow
        bucket = math.floor(now / self._tb_width)
        head, n = self._tb_head, self._tb_n
        if bucket <= head:
            return self._wcalls, self._wfail, self._wslow
        calls = fail = slow = 0
        oldest_kept = bucket - n + 1
        for i in range(n):
            if head - (head - i) % n >= oldest_kept:  # the absolute bucket slot i holds
                calls += self._tb_calls[i]
                fail += self._tb_fail[i]
                slow += self._tb_slow[i]
        return calls, fail, slow

    def _advance_time_window(self, bucket: int) -> None:
        """Expire the buckets between the newest one and `bucket` (at most `n` of them)."""
        head = self._tb_head
        if bucket <= head:
            return
        n = self._tb_n
        calls, fail, slow = self._tb_calls, self._tb_fail, self._tb_slow
        if bucket - head >= n:
            if self._wcalls:
                for i in range(n):
                    calls[i] = fail[i] = slow[i] = 0
                self._wcalls = self._wfail = self._wslow = 0
        else:
            for b in range(head + 1, bucket + 1):
                i = b % n
                if calls[i]:
                    self._wcalls -= calls[i]
                    self._wfail -= fail[i]
                    self._wslow -= slow[i]
                    calls[i] = fail[i] = slow[i] = 0
        self._tb_head = bucket
        self._tb_i = bucket % n
        self._tb_start = bucket * self._tb_width
        self._tb_end = (bucket + 1) * self._tb_width

    def _evaluate(self, code: int, now: float | None) -> None:
        """After a Closed call was recorded: trip if a rule says so."""
        if code & _FAILED and self._consecutive >= self._consec_limit:
            self._trip(Reason.CONSECUTIVE_FAILURES, self._clock() if now is None else now)
            return
        wcalls = self._wcalls
        if wcalls < self._min_calls:
            return
        if self._wfail * 100.0 >= self._fail_pct * wcalls:
            self._trip(Reason.FAILURE_RATE, self._clock() if now is None else now)
        elif self._wslow * 100.0 >= self._slow_pct * wcalls:
            self._trip(Reason.SLOW_CALL_RATE, self._clock() if now is None else now)

    def _acquire_slow(self) -> int:
        now = self._clock()
        self._tick(now)
        st = self._st
        if st == _CLOSED:
            return ADMITTED
        if st == _HALF_OPEN and self._trials < self._permitted:
            self._trials += 1
            if self._half_deadline is None and self._max_wait is not None:
                self._half_deadline = now + self._max_wait
            return TRIAL
        if self._observe:
            self._would_reject += 1
            return OBSERVED_REJECT
        self._rejections += 1
        return REJECTED

    def _on_other_result(self, token: int, outcome: Outcome, duration: float) -> None:
        """Every result but a normal call completing in a recording Closed breaker."""
        if token == REJECTED:
            return  # nothing was admitted: nothing to record
        slow = duration >= self._slow_s
        if outcome is _IGNORED:
            self._ignored += 1
        else:
            self._calls += 1
            if outcome is _FAILURE:
                self._failures += 1
            if slow:
                self._slow_calls += 1
        if token != TRIAL:
            return
        if self._stale_trials:
            self._stale_trials -= 1
        elif self._trials:
            self._trials -= 1
        now = self._clock()
        self._tick(now)
        if self._st != _HALF_OPEN:
            return
        if outcome is _IGNORED:
            if not self._trials:
                self._half_deadline = None
            return
        if outcome is _FAILURE:
            self._trip(Reason.TRIAL_FAILED, now)
        elif slow and self._slow_rule:
            self._trip(Reason.TRIAL_SLOW, now)
        else:
            self._half_successes += 1
            if self._half_successes >= self._to_close:
                self._close(Reason.TRIALS_SUCCEEDED, now)
            elif self._trials and self._max_wait is not None:
                self._half_deadline = now + self._max_wait
            else:
                self._half_deadline = None

    def _tick(self, now: float) -> None:
        """Apply the time-driven transitions due at `now`, at the times they were due."""
        while True:
            st = self._st
            if st == _OPEN:
                if now < self._open_until:
                    return
                self._enter_half_open(self._open_until)
            elif st == _HALF_OPEN:
                deadline = self._half_deadline
                if deadline is None or now < deadline:
                    return
                self._trip(Reason.HALF_OPEN_MAX_WAIT, deadline)
            else:
                return

    def _base_after(self, streak: int) -> float:
        """The un-jittered open duration of the trip after `streak` trips in a row."""
        s = self._settings
        base = min(s.open_seconds, s.open_max_seconds)
        for _ in range(streak):
            if base >= s.open_max_seconds or base == 0.0 or s.backoff_multiplier == 1.0:
                break
            base = min(base * s.backoff_multiplier, s.open_max_seconds)
        return base

    def _leave_half_open(self) -> None:
        self._stale_trials += self._trials
        self._trials = 0
        self._half_successes = 0
        self._half_deadline = None

    def _trip(self, reason: Reason, at: float) -> None:
        """Open by a rule (Closed -> Open or HalfOpen -> Open), with backoff and jitter."""
        s = self._settings
        self._leave_half_open()
        base = self._next_base
        self._next_base = min(base * s.backoff_multiplier, s.open_max_seconds)
        self._streak += 1
        self._trips += 1
        duration = base
        if s.jitter:
            duration = base * (1.0 + s.jitter * (2.0 * self._rng() - 1.0))
        duration = max(0.0, min(duration, s.open_max_seconds))
        self._open_until = at + duration
        self._set_state(_OPEN, reason, at)

    def _enter_half_open(self, at: float) -> None:
        self._half_successes = 0
        self._half_deadline = None
        self._set_state(_HALF_OPEN, Reason.OPEN_TIMEOUT_ELAPSED, at)

    def _close(self, reason: Reason, at: float) -> None:
        self._leave_half_open()
        self._streak = 0
        self._next_base = self._base_after(0)
        self._consecutive = 0
        self._open_until = 0.0
        self._clear_window()
        self._set_state(_CLOSED, reason, at)

    def _change_mode(self, old: Mode, new: Mode, now: float) -> None:
        self._mode = new
        self._observe = new is Mode.OBSERVE
        if new is Mode.FORCE_OPEN:
            self._leave_half_open()
            self._open_until = _INF
            if self._st != _OPEN:
                self._set_state(_OPEN, Reason.MODE_CHANGED, now)
        elif new is Mode.DISABLED or old in (Mode.FORCE_OPEN, Mode.DISABLED):
            if self._st != _CLOSED:
                self._close(Reason.MODE_CHANGED, now)
            else:
                self._streak = 0
                self._next_base = self._base_after(0)
                self._consecutive = 0
                self._clear_window()
        self._refresh_flags()

    def _refresh_flags(self) -> None:
        self._closed = self._st == _CLOSED
        self._recording = self._closed and self._mode in (Mode.ENFORCE, Mode.OBSERVE)

    def _set_state(self, to: int, reason: Reason, at: float) -> None:
        frm = self._st
        self._st = to
        self._state_since = at
        self._refresh_flags()
        event = Transition(
            upstream=self._name, from_state=_STATES[frm], to_state=_STATES[to], reason=reason.value, at=at
        )
        self._transitions.append(event)
        if self._on_transition is not None:
            self._on_transition(event)
