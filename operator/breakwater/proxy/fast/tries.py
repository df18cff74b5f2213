"""The tries of a fast-path exchange: the breaker asked, a pooled or new connection, retries within
the budget and the deadline, and what a try that fails leads to (see `exchange.py` for the semantics).

`Tries` is a mixin of `Exchange`: the state it works on is declared here and lives in `Exchange`'s slots.
"""

from __future__ import annotations

import asyncio
import logging
import random
from typing import TYPE_CHECKING, Final

from breakwater.breaker import REJECTED, Outcome
from breakwater.proxy.classifiers import FailureKind
from breakwater.proxy.fast.deadlines import DeadlineOwner, Deadlines
from breakwater.proxy.fast.pool import Pool, UpstreamConnection
from breakwater.proxy.fast.relay import Relay
from breakwater.proxy.upstream import LiveUpstream

if TYPE_CHECKING:
    pass

__all__ = ["Tries"]

log = logging.getLogger("breakwater.proxy.fast.exchange")

_FAILURE: Final = Outcome.FAILURE
_IGNORED: Final = Outcome.IGNORED
_FAILURE_STATUS: Final = {FailureKind.CONNECT: 502, FailureKind.RESET: 502, FailureKind.TIMEOUT: 504}
_BACKOFF_BASE: Final = 0.025
_BACKOFF_CAP: Final = 0.25


class Tries(Relay):
    __slots__ = (
        "admitted",
        "attempt",
        "attempt_start",
        "connecting",
        "deadline",
        "deadline_bucket",
        "deadlines",
        "failed",
        "holding",
        "in_bulkhead",
        "may_retry",
        "permit",
        "pool",
        "pool_up",
        "replay",
        "retried_idle",
        "token",
        "up",
        "up_out",
        "upstream_paused_client",
        "waiter",
    )

    up: LiveUpstream | None
    pool: Pool | None
    pool_up: LiveUpstream | None
    deadlines: Deadlines
    deadline_bucket: set[DeadlineOwner] | None
    waiter: asyncio.Future[None] | None
    up_out: list[bytes]
    replay: list[bytes] | None
    token: int
    permit: bool
    attempt: int
    attempt_start: float
    deadline: float
    connecting: bool
    may_retry: bool
    retried_idle: bool

    def _answer_fallback(self, reason: str, status: int, retry_after: float | None) -> None:
        raise NotImplementedError

    def _release_permit(self, outcome: Outcome, duration: float = 0.0) -> None:
        raise NotImplementedError

    def _drop_upstream(self) -> None:
        raise NotImplementedError

    def _end(self) -> None:
        raise NotImplementedError

    # ------------------------------------------------------------------------------------------------
    # Tries
    # ------------------------------------------------------------------------------------------------

    def _attempt(self) -> None:
        up = self.up
        assert up is not None
        self.attempt += 1
        token = up.breaker.try_acquire()
        if token == REJECTED:
            up.stats.rejected += 1
            self._answer_fallback("open", 503, up.breaker.retry_after())
            return
        self.token = token
        self.permit = True
        self.attempt_start = self.loop.time()
        per_try = up.per_try_timeout
        if per_try is not None and self.attempt_start + per_try < self.deadline:
            self._rearm(self.attempt_start + per_try)
        pool = self.pool
        assert pool is not None
        conn = pool.take()
        if conn is not None:
            self._attach(conn)
        else:
            self._connect()

    def _connect(self) -> None:
        pool = self.pool
        assert pool is not None
        self.connecting = True
        attempt = self.attempt
        pool.connect(lambda conn, error: self._connected(attempt, conn, error))

    def _connected(self, attempt: int, conn: UpstreamConnection | None, error: BaseException | None) -> None:
        if not self.connecting or attempt != self.attempt or self.up is None:
            if conn is not None:  # nobody waits for it any more: keep it for the next request
                assert self.pool is not None
                conn.pool.give_back(conn)
            return
        self.connecting = False
        if conn is None:
            if not isinstance(error, asyncio.CancelledError):
                self._failed(FailureKind.CONNECT, error)
            return
        self._attach(conn)

    def _attach(self, conn: UpstreamConnection) -> None:
        raise NotImplementedError

    def _rearm(self, at: float) -> None:
        self.deadlines.set(self, at)

    def _retry_delay(self) -> float | None:
        """The backoff before the next try, spent from the budget; None: no retry."""
        up = self.up
        assert up is not None
        budget = up.budget
        if not self.may_retry or budget is None or self.attempt >= up.retry.attempts:
            return None
        delay = min(_BACKOFF_CAP, _BACKOFF_BASE * 2.0 ** (self.attempt - 1)) * (0.5 + random.random())
        if self.loop.time() + delay >= self.deadline or not budget.try_spend():
            return None
        up.stats.retries += 1
        return delay

    def _retry_later(self, delay: float) -> None:
        self._rearm(self.deadline)
        self.timer_retry = self.loop.call_later(delay, self._retry_now)

    def _retry_now(self) -> None:
        self.timer_retry = None
        if self.up is not None:
            self._attempt()

    # ------------------------------------------------------------------------------------------------
    # Failures and the deadline
    # ------------------------------------------------------------------------------------------------

    def _failed(self, kind: FailureKind, error: BaseException | None) -> None:
        """This try produced no complete answer."""
        up = self.up
        assert up is not None
        elapsed = self.loop.time() - self.attempt_start
        self._drop_upstream()
        req = self.req
        assert req is not None
        if self.head_sent:
            self._release_permit(_FAILURE if up.failures.counts(kind) else _IGNORED, elapsed)
            up.stats.failures += 1
            log.debug("upstream %s: answer broke off: %s (%r)", up.name, kind.value, error)
            self.client.abort()
            self._end()
            return
        up.stats.observe(elapsed)
        self._release_permit(_FAILURE if up.failures.counts(kind) else _IGNORED, elapsed)
        if kind in up.retry.kinds:
            delay = self._retry_delay()
            if delay is not None:
                self._retry_later(delay)
                return
        up.stats.failures += 1
        log.debug("upstream %s: %s (%r)", up.name, kind.value, error)
        self._answer_fallback(kind.value, _FAILURE_STATUS[kind], None)

    def on_deadline(self) -> None:
        up = self.up
        req = self.req
        if up is None or req is None:
            return
        if self.waiter is not None:  # still in the bulkhead's line: the waiting line's own timer answers
            return
        if not req.complete:
            # The client has not sent its whole body in time: its fault, not the upstream's.
            self._release_permit(_IGNORED)
            self._drop_upstream()
            up.stats.client_errors += 1
            if self.head_sent:
                self.client.abort()
            else:
                self.client.client_error(408, "request body not received")
            self._end()
            return
        if self.loop.time() < self.deadline - 0.001:  # a per-try timeout, inside the whole deadline
            self._failed(FailureKind.TIMEOUT, None)
            return
        self.may_retry = False
        self._failed(FailureKind.TIMEOUT, None)
