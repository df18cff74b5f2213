"""One request of a client connection on the fast path: bulkhead, breaker, retries, relay, deadline.

Each client connection owns one `Exchange` and reuses it for every request it carries (requests on a
connection are answered one at a time, in order). Everything is driven by protocol callbacks, the
fast path's shared `Deadlines` and timer handles: no Task, no Future (but a bulkhead's waiting
line), no exception on the normal path.

Semantics, the same as the full path's (`proxy/full/exchange.py`):

- Deadline: ``timeoutSeconds`` bounds the whole call, from the request's arrival to the last byte of
  the answer, retries included; ``perTryTimeoutSeconds`` bounds each try within it. At the deadline
  an answer not started is 504 (or the fallback); one already streaming is cut (the client connection
  is closed, so the answer is seen as broken, never as complete). A client whose request body is not
  complete by then gets 408 and the upstream is not blamed.
- The breaker sees one result per try: the status class or the transport failure, with the time until
  the response head as its duration; a body that breaks off counts as a reset; a client that goes away
  makes the try ``IGNORED``.
- Retries: idempotent methods only, with no body or one of known length up to `SMALL_BODY` (kept for
  replay), for the configured conditions, within the budget, with a jittered backoff inside the
  deadline; each try asks the breaker again. An idle pooled connection that the upstream had closed
  (it fails before any byte of an answer) is retried once on a fresh connection, for idempotent
  requests only, without counting against the upstream.
"""

from __future__ import annotations

import asyncio
import logging
from typing import TYPE_CHECKING, Final

import httptools

from breakwater.breaker import Outcome
from breakwater.proxy.answers import Answer, fallback_applies, fallback_or
from breakwater.proxy.cache import CacheFill, ResponseCache
from breakwater.proxy.classifiers import IDEMPOTENT_METHODS, FailureKind
from breakwater.proxy.fast.deadlines import DeadlineOwner
from breakwater.proxy.fast.pool import Pool, UpstreamConnection
from breakwater.proxy.fast.tries import Tries
from breakwater.proxy.fast.wire import CONTINUE, HeaderLines
from breakwater.proxy.upstream import LiveUpstream

if TYPE_CHECKING:
    from breakwater.proxy.fast.request import RequestHead
    from breakwater.proxy.fast.server import ClientConnection

__all__ = ["SMALL_BODY", "Exchange"]

log = logging.getLogger(__name__)

SMALL_BODY: Final = 64 * 1024
"""Request bodies of known length up to this size are kept for replay (so such requests can retry)."""

_SUCCESS: Final = Outcome.SUCCESS
_FAILURE: Final = Outcome.FAILURE
_IGNORED: Final = Outcome.IGNORED
_FAILURE_STATUS: Final = {FailureKind.CONNECT: 502, FailureKind.RESET: 502, FailureKind.TIMEOUT: 504}
_BACKOFF_BASE: Final = 0.025
_BACKOFF_CAP: Final = 0.25


class Exchange(Tries):
    """The request in flight on one client connection (see the module docstring)."""

    __slots__ = ()

    def __init__(self, client: ClientConnection) -> None:
        super().__init__(client)
        self.up: LiveUpstream | None = None
        self.pool: Pool | None = None
        self.pool_up: LiveUpstream | None = None  # whose pool `pool` is (kept: usually the next one's)
        self.deadlines = client.listener.engine.deadlines
        self.deadline_bucket: set[DeadlineOwner] | None = None
        self.waiter: asyncio.Future[None] | None = None
        self.up_out: list[bytes] = []  # for the upstream, not written yet (connecting, or held)
        self.holding = False  # the upstream's bytes wait for the rest of the client's read (`_attach`)
        self.replay: list[bytes] | None = None
        self.permit = False
        self.token = 0
        self.attempt = 0
        self.attempt_start = 0.0
        self.deadline = 0.0
        self.connecting = False
        self.in_bulkhead = False
        self.admitted = False
        self.may_retry = False
        self.retried_idle = False
        self.failed = False
        self.upstream_paused_client = False

    # ------------------------------------------------------------------------------------------------
    # From the client connection
    # ------------------------------------------------------------------------------------------------

    def begin(self, req: RequestHead, up: LiveUpstream) -> None:
        """Start answering `req` (its head is complete; its body may still be arriving)."""
        self.up = up
        up.stats.fast_path += 1
        breaker = up.breaker
        if breaker.reject_now():  # open: answered before it takes a bulkhead slot or budget share
            self.req = req  # (the relay's state is not touched by an answer of the proxy's own)
            up.stats.rejected += 1
            self._answer_fallback("open", 503, breaker.retry_after())
            return
        self.req = req
        self.head_sent = False
        self.fill = None
        if self.pool_up is not up:
            self.pool = self.client.pools.get(up.host, up.port)
            self.pool_up = up
        self.attempt = 0
        self.permit = False
        self.connecting = False
        self.retried_idle = False
        self.upstream_paused_client = False
        self.holding = False
        self.up_out.clear()
        loop = self.loop
        self.deadline = loop.time() + up.timeout
        bulkhead = up.bulkhead
        self.in_bulkhead = False
        self.admitted = False
        if bulkhead is not None and not bulkhead.try_enter():
            self.waiter = bulkhead.wait_for_slot(self._on_slot, up.timeout)
            if self.waiter is None:
                up.stats.bulkhead_full += 1
                self._answer_fallback("bulkhead-full", 503, None)
        else:
            self._admitted(bulkhead is not None)
        # The deadline only for a request still going: one answered at once (a rejection while the
        # breaker is open) sets none. A per-try deadline set meanwhile stays.
        if self.up is not None and self.deadline_bucket is None:
            self.deadlines.set(self, self.deadline)

    def _on_slot(self, granted: bool) -> None:
        if self.waiter is None:  # abandoned meanwhile (the slot, if any, was given back)
            return
        self.waiter = None
        up = self.up
        assert up is not None
        if not granted:
            up.stats.bulkhead_full += 1
            self._answer_fallback("bulkhead-full", 503, None)
            return
        self._admitted(True)

    def _admitted(self, in_bulkhead: bool) -> None:
        up = self.up
        req = self.req
        assert up is not None
        assert req is not None
        self.in_bulkhead = in_bulkhead
        self.admitted = True
        up.stats.in_flight += 1
        length = req.content_length
        replayable = (not req.chunked and length <= SMALL_BODY) or (req.complete and not req.body)
        self.replay = [] if replayable else None
        if req.body:
            self.up_out.extend(req.body)
            if self.replay is not None:
                self.replay.extend(req.body)
            req.body.clear()
        budget = up.budget
        self.may_retry = budget is not None and replayable and req.method in IDEMPOTENT_METHODS
        if budget is not None:
            budget.record_request()
        self._attempt()

    def request_body(self, chunk: bytes) -> None:
        """A piece of the request body (already de-chunked by the parser: re-chunked if it came so)."""
        req = self.req
        assert req is not None
        self._to_upstream(b"%x\r\n%b\r\n" % (len(chunk), chunk) if req.chunked else chunk)

    def request_complete(self) -> None:
        req = self.req
        assert req is not None
        if req.chunked:
            self._to_upstream(b"0\r\n\r\n")

    def _to_upstream(self, piece: bytes) -> None:
        if self.replay is not None:
            self.replay.append(piece)
        if self.holding:
            self.up_out.append(piece)
            return
        conn = self.conn
        if conn is not None and conn.transport is not None:
            conn.transport.write(piece)
        else:
            self.up_out.append(piece)

    def client_lost(self) -> None:
        """The client went away mid-exchange: nothing about the upstream is learned."""
        up = self.up
        if up is None:
            return
        if self.waiter is not None:
            waiter, self.waiter = self.waiter, None
            if up.bulkhead is not None:
                up.bulkhead.abandon(waiter)
        else:
            up.stats.client_errors += 1
        self._release_permit(_IGNORED)
        self._drop_upstream()
        self._end()

    def client_paused(self, paused: bool) -> None:
        """The client cannot take more of the answer now: stop reading the upstream meanwhile."""
        conn = self.conn
        if conn is not None and conn.transport is not None:
            if paused:
                conn.transport.pause_reading()
            else:
                conn.transport.resume_reading()

    def upstream_paused(self, paused: bool) -> None:
        self.upstream_paused_client = paused
        self.client.pause_body(paused)

    def _attach(self, conn: UpstreamConnection) -> None:
        req = self.req
        up = self.up
        assert req is not None
        assert up is not None
        assert conn.transport is not None
        self.conn = conn
        conn.exchange = self
        conn.parser = httptools.HttpResponseParser(self)
        self.reset_response()
        transport = conn.transport
        if req.expect_continue and not req.complete:
            req.expect_continue = False
            self.client.write(CONTINUE)
        if self.attempt == 1 and not self.retried_idle:
            up_out = self.up_out
            if not req.complete:
                # Its body is still coming, some of it maybe in the client's read being parsed: the
                # head waits for that (a callback at the end of this loop turn), one write for both.
                up_out.insert(0, req.upstream_head(up))
                self.holding = True
                self.loop.call_soon(self._write_held, conn)
            elif up_out:
                transport.writelines([req.upstream_head(up), *up_out])
                up_out.clear()
            else:
                transport.write(req.upstream_head(up))
        else:
            transport.writelines([req.upstream_head(up), *(self.replay or ())])
            self.up_out.clear()

    def _write_held(self, conn: UpstreamConnection) -> None:
        if not self.holding:  # (a new request began meanwhile: it writes its own)
            return
        self.holding = False
        if conn is self.conn and conn.transport is not None:
            conn.transport.writelines(self.up_out)
            self.up_out.clear()

    # ------------------------------------------------------------------------------------------------
    # From the upstream connection (what `Relay` does not handle itself)
    # ------------------------------------------------------------------------------------------------

    def upstream_lost(self, conn: UpstreamConnection) -> None:
        if conn is not self.conn:
            return
        self.conn = None
        if self.complete:
            return
        if self.status and self.close_delimited:
            self.response_ended_by_close()
            return
        req = self.req
        if (
            not self.got_response
            and conn.served > 0
            and not self.retried_idle
            and req is not None
            and req.method in IDEMPOTENT_METHODS
            and self.replay is not None
        ):
            # A pooled connection the upstream had closed while idle: once more, on a fresh one.
            self.retried_idle = True
            self._connect()
            return
        self._failed(FailureKind.RESET, None)

    def upstream_upgraded(self, conn: UpstreamConnection) -> None:
        """The upstream switched protocols unasked (the fast path never forwards an upgrade)."""
        self.upstream_malformed(conn, ValueError("unsolicited 101 Switching Protocols"))

    def upstream_malformed(self, conn: UpstreamConnection, error: BaseException) -> None:
        if conn is not self.conn:
            conn.close()
            return
        if self.complete and self.status:  # bytes past a complete final answer: it stands, not its connection
            self.answer_ended(conn)
            return
        log.debug("upstream sent an invalid response: %r", error)
        if self.head_sent and self.out and self.out[0] is self.head_out:
            # Its head came in this read and was not written: the client can still be told (502).
            self.out.clear()
            self.head_sent = False
        self._failed(FailureKind.RESET, error)

    # ------------------------------------------------------------------------------------------------
    # Relay hooks
    # ------------------------------------------------------------------------------------------------

    def response_head(self, status: int) -> bool:
        """The response head arrived: judge it; False when it is discarded for a retry."""
        up = self.up
        assert up is not None
        duration = self.loop.time() - self.attempt_start
        up.stats.observe(duration)
        # (`status` has three digits, the parser's rule: the policies' tables cover them all.)
        self.failed = failed = up.failures.statuses[status]
        if up.retry.statuses[status]:
            delay = self._retry_delay()
            if delay is not None:
                self._release_permit(_FAILURE if failed else _SUCCESS, duration)
                self.discard_for_retry(delay)
                return False
        self.token_duration = duration
        cache = up.cache
        req = self.req
        assert req is not None
        # `ResponseCache.request_storable` and `.key`, from what the request's parse noted (and only
        # for a 200, the one status `begin` stores).
        if (
            cache is not None
            and status == 200
            and not failed
            and req.method == "GET"
            and (req.cache_control is None or not req.no_store)
        ):
            if req.authorization is None and req.cookie is None:
                key = req.path_qs
            else:
                key = ResponseCache.credentials_key(req.path_qs, req.authorization, req.cookie)
            fill: CacheFill | None = cache.begin(key, status, self.response_lines, self.length)
            if fill is not None:
                fill.reason = self.reason.decode("latin-1")
            self.fill = fill
        return True

    def retry_discarded(self, delay: float) -> None:
        self._retry_later(delay)

    def response_done(self) -> None:
        """The whole answer was relayed."""
        up = self.up
        assert up is not None
        if self.permit:  # (`_release_permit`, inline)
            self.permit = False
            up.breaker.on_result(self.token, _FAILURE if self.failed else _SUCCESS, self.token_duration)
        if self.failed:
            up.stats.failures += 1
        else:
            up.stats.successes += 1
        if self.fill is not None:
            req = self.req
            assert req is not None
            self.fill.commit(HeaderLines(req.lines))
            self.fill = None
        self._end()

    # ------------------------------------------------------------------------------------------------
    # Endings
    # ------------------------------------------------------------------------------------------------

    def _answer_fallback(self, reason: str, status: int, retry_after: float | None) -> None:
        up = self.up
        req = self.req
        assert up is not None
        assert req is not None
        if not fallback_applies(up, req.method):
            self.client.answer_marked_error(up.name, reason, status, retry_after)
            self._end()
            return
        answer: Answer = fallback_or(
            up,
            reason,
            status,
            retry_after,
            method=req.method,
            path_qs=req.path_qs,
            request_headers=HeaderLines(req.lines),
        )
        self.client.answer(answer)
        self._end()

    def _release_permit(self, outcome: Outcome, duration: float = 0.0) -> None:
        if self.permit:
            self.permit = False
            up = self.up
            assert up is not None
            up.breaker.on_result(self.token, outcome, duration)

    def _drop_upstream(self) -> None:
        self.connecting = False
        conn = self.conn
        if conn is not None:
            self.conn = None
            conn.close()

    def _end(self) -> None:
        """This request is over, whichever way: free what it held, let the client go on."""
        up = self.up
        if up is None:
            return
        self.up = None
        bucket = self.deadline_bucket  # (`Deadlines.clear`, inline)
        if bucket is not None:
            bucket.discard(self)
            self.deadline_bucket = None
        if self.timer_retry is not None:
            self.timer_retry.cancel()
            self.timer_retry = None
        if self.admitted:
            self.admitted = False
            up.stats.in_flight -= 1
        if self.in_bulkhead:
            self.in_bulkhead = False
            if up.bulkhead is not None:
                up.bulkhead.leave()
        self.replay = None
        self.fill = None
        self.client.exchange_ended()
