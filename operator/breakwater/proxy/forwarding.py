"""The forwarding path: one client request through bulkhead, breaker and retries to its upstream.

This module is the hot path and is kept separable on purpose: `Forwarder.forward` takes an aiohttp
request and a compiled `LiveUpstream` and returns the response; listeners, reloads and admin live
elsewhere. A later implementation may replace this module wholesale.

Semantics (what a reader of the code should not have to reverse-engineer):

- Streaming: request and response bodies flow through in chunks. Bodies whose length is known and at
  most `SMALL_BODY` bytes are read in one piece instead (one write instead of two, and such a request
  can be retried); nothing larger is ever held whole.
- Timeouts: ``timeoutSeconds`` is an inactivity timeout, like nginx's ``proxy_read_timeout`` and
  HAProxy's ``timeout server``: it bounds connecting, the wait for the response once the request is
  sent, and every silence between body chunks. A download that keeps flowing is never cut, a stalled
  one is. (A per-request hard deadline costs a timer per request on the hot path; an upstream that
  trickles its answer a byte at a time is progress, not a hang.) Retries are only started within
  ``timeoutSeconds`` of the request's arrival; ``perTryTimeoutSeconds`` replaces the inactivity timeout
  of each try.
- The breaker sees one result per attempt: the status class (``failures.statusCodes``) or the transport
  failure (connect error / timeout / reset, each countable or not), with the time until the response
  headers as its duration. A response whose body breaks off counts as a reset. A client that goes away
  or stalls its own upload makes the attempt ``IGNORED`` (it says nothing about the upstream).
- Answers the proxy makes itself carry ``x-breakwater``: ``open`` (503 + Retry-After), ``bulkhead-full``
  (503), ``timeout`` (504), ``connect-error`` / ``reset`` (502), ``fallback-static`` /
  ``fallback-cached`` (with ``x-breakwater-reason``). Fallbacks answer rejections, a full bulkhead and
  transport failures; an upstream's own error response is passed through as it is.
- Retries: only idempotent methods (RFC 9110), only with a replayable body, only for the configured
  conditions, only while the retry budget allows, with a short jittered backoff inside the deadline.
  Each try asks the breaker again; a rejection ends the retries.
- Once response headers were sent, a broken upstream body is passed on by closing the client
  connection (the client sees a truncated message, never a silently short "complete" one).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import math
import random
from collections.abc import Awaitable
from typing import Final

import aiohttp
from aiohttp import web
from multidict import CIMultiDict
from yarl import URL

from breakwater.breaker import REJECTED, Breaker, Outcome
from breakwater.proxy.cache import CacheFill, ResponseCache
from breakwater.proxy.classifiers import IDEMPOTENT_METHODS, FailureKind
from breakwater.proxy.headers import MARKER, MARKER_REASON, end_to_end
from breakwater.proxy.request_body import CONTINUE, ClientBodyError, RequestBody
from breakwater.proxy.stats import UpstreamStats
from breakwater.proxy.upstream import LiveUpstream

__all__ = ["SMALL_BODY", "Forwarder", "classify_exception", "retry_after_header"]

log = logging.getLogger(__name__)

SMALL_BODY: Final = 64 * 1024
"""Bodies of known length up to this size are read whole (and requests with them are retriable)."""

_SUCCESS: Final = Outcome.SUCCESS
_FAILURE: Final = Outcome.FAILURE
_IGNORED: Final = Outcome.IGNORED
_EMPTY_BODY_STATUSES: Final = frozenset({204, 304})


_UPSTREAM_ERRORS: Final = (aiohttp.ClientError, TimeoutError, OSError, ClientBodyError)
_FAILURE_STATUS: Final = {FailureKind.CONNECT: 502, FailureKind.RESET: 502, FailureKind.TIMEOUT: 504}
_BACKOFF_BASE: Final = 0.025
_BACKOFF_CAP: Final = 0.25


def classify_exception(exc: BaseException) -> FailureKind:
    """Which kind of transport failure an aiohttp client exception is."""
    if isinstance(exc, aiohttp.ConnectionTimeoutError):
        return FailureKind.CONNECT
    if isinstance(exc, TimeoutError):
        return FailureKind.TIMEOUT
    if isinstance(exc, aiohttp.ClientConnectorError):
        return FailureKind.CONNECT
    return FailureKind.RESET


def _json_body(**fields: object) -> bytes:
    return json.dumps(fields, separators=(",", ":")).encode()


def retry_after_header(seconds: float) -> str:
    if not math.isfinite(seconds):
        return "60"
    return str(max(1, math.ceil(seconds)))


class _Permit:
    """One admitted breaker token: `finish` reports its outcome exactly once, whatever path ends it."""

    __slots__ = ("breaker", "duration", "pending", "token")

    def __init__(self, breaker: Breaker, token: int, duration: float) -> None:
        self.breaker = breaker
        self.token = token
        self.duration = duration
        self.pending = True

    def finish(self, outcome: Outcome) -> None:
        if self.pending:
            self.pending = False
            self.breaker.on_result(self.token, outcome, self.duration)


class Forwarder:
    """Forwards requests with one shared `aiohttp.ClientSession` (its pool keeps upstream connections)."""

    __slots__ = ("_session",)

    def __init__(self, session: aiohttp.ClientSession) -> None:
        self._session = session

    # ------------------------------------------------------------------------------------------------
    # Entry point
    # ------------------------------------------------------------------------------------------------

    async def forward(
        self, request: web.BaseRequest, up: LiveUpstream, *, keep_host: bool = False
    ) -> web.StreamResponse:
        """Answer `request` from upstream `up`.

        On an upstream's own listener the ``Host`` header becomes the upstream's ``host:port``; the
        forward proxy passes ``keep_host`` (the client already named the upstream).
        """
        stats = up.stats
        bulkhead = up.bulkhead
        if bulkhead is not None and not bulkhead.try_enter() and not await bulkhead.enter(up.timeout):
            stats.bulkhead_full += 1
            return self._fallback_or(request, up, "bulkhead-full", 503, None)
        stats.in_flight += 1
        try:
            return await self._forward(request, up, keep_host)
        finally:
            stats.in_flight -= 1
            if bulkhead is not None:
                bulkhead.leave()

    # ------------------------------------------------------------------------------------------------
    # The attempt loop
    # ------------------------------------------------------------------------------------------------

    async def _forward(
        self, request: web.BaseRequest, up: LiveUpstream, keep_host: bool
    ) -> web.StreamResponse:
        stats = up.stats
        breaker = up.breaker
        method = request.method
        headers = end_to_end(request.headers)
        if not keep_host:
            headers["Host"] = up.host_header
        expect = False
        if "Expect" in headers:
            expect = headers.popall("Expect")[0].lower() == "100-continue" and request.version >= (1, 1)

        data: bytes | RequestBody | None = None
        streamed: RequestBody | None = None
        if request.body_exists:
            length = request.content_length
            if length is not None and length <= SMALL_BODY:
                try:
                    data = await self._read_small_body(request, up.timeout, expect)
                except ClientBodyError as exc:
                    stats.client_errors += 1
                    return self._client_error(exc)
            else:
                data = streamed = RequestBody(request, expect, up.timeout)

        raw = request.raw_path
        url = up.url(raw if raw[:1] == "/" else request.rel_url.raw_path_qs)

        retry = up.retry
        budget = up.budget
        may_retry = budget is not None and streamed is None and method in IDEMPOTENT_METHODS
        if budget is not None:
            budget.record_request()
        loop = asyncio.get_running_loop()
        deadline = loop.time() + up.timeout
        attempt = 0
        while True:
            attempt += 1
            token = breaker.try_acquire()
            if token == REJECTED:
                stats.rejected += 1
                return self._fallback_or(request, up, "open", 503, breaker.retry_after())
            start = loop.time()
            permit = _Permit(breaker, token, 0.0)
            timeout = up.client_timeout if retry.per_try_timeout is None else up.per_try_timeout
            try:
                resp = await self._send(method, url, headers, data, timeout)
            except _UPSTREAM_ERRORS as exc:
                permit.duration = elapsed = loop.time() - start
                if streamed is not None and streamed.client_at_fault:
                    permit.finish(_IGNORED)
                    stats.client_errors += 1
                    return self._client_error(exc, streamed)
                kind = classify_exception(exc)
                stats.observe(elapsed)
                permit.finish(_FAILURE if up.failures.counts(kind) else _IGNORED)
                if may_retry and attempt < retry.attempts and kind in retry.kinds:
                    delay = self._retry_delay(up, attempt, deadline)
                    if delay is not None:
                        await asyncio.sleep(delay)
                        continue
                stats.failures += 1
                log.debug("upstream %s: %s (%r)", up.name, kind.value, exc)
                return self._fallback_or(request, up, kind.value, _FAILURE_STATUS[kind], None)
            except BaseException:
                permit.finish(_IGNORED)
                raise
            permit.duration = ttfb = loop.time() - start
            stats.observe(ttfb)
            status = resp.status
            failed = up.failures.is_failure_status(status)
            if may_retry and attempt < retry.attempts and retry.retries_status(status):
                delay = self._retry_delay(up, attempt, deadline)
                if delay is not None:
                    permit.finish(_FAILURE if failed else _SUCCESS)
                    resp.close()
                    await asyncio.sleep(delay)
                    continue
            return await self._relay(request, up, resp, permit, failed, streamed)

    async def _read_small_body(self, request: web.BaseRequest, limit: float, expect: bool) -> bytes:
        try:
            async with asyncio.timeout(limit):
                if expect:
                    await request.writer.write(CONTINUE)
                return await request.read()
        except (TimeoutError, ConnectionError, aiohttp.ClientError, ValueError) as exc:
            raise ClientBodyError(str(exc) or type(exc).__name__) from exc

    def _send(
        self,
        method: str,
        url: URL,
        headers: CIMultiDict[str],
        data: bytes | RequestBody | None,
        client_timeout: aiohttp.ClientTimeout,
    ) -> Awaitable[aiohttp.ClientResponse]:
        return self._session.request(
            method,
            url,
            headers=headers,
            data=data,
            allow_redirects=False,
            timeout=client_timeout,
        )

    @staticmethod
    def _retry_delay(up: LiveUpstream, attempt: int, deadline: float) -> float | None:
        """The backoff before retry number `attempt`, spent from the budget; None: no retry."""
        budget = up.budget
        if budget is None:
            return None
        delay = min(_BACKOFF_CAP, _BACKOFF_BASE * 2.0 ** (attempt - 1)) * (0.5 + random.random())
        if asyncio.get_running_loop().time() + delay >= deadline or not budget.try_spend():
            return None
        up.stats.retries += 1
        return delay

    # ------------------------------------------------------------------------------------------------
    # Relaying the upstream's answer
    # ------------------------------------------------------------------------------------------------

    async def _relay(
        self,
        request: web.BaseRequest,
        up: LiveUpstream,
        resp: aiohttp.ClientResponse,
        permit: _Permit,
        failed: bool,
        streamed: RequestBody | None,
    ) -> web.StreamResponse:
        stats = up.stats
        status = resp.status
        method = request.method
        headers = end_to_end(resp.headers)
        fill: CacheFill | None = None
        cache = up.cache
        if cache is not None and not failed and ResponseCache.request_storable(method, request.headers):
            fill = cache.begin(_cache_key(request), status, resp.headers, resp.content_length)
            if fill is not None:
                fill.reason = resp.reason or ""
        outcome = _FAILURE if failed else _SUCCESS
        try:
            if method == "HEAD" or status in _EMPTY_BODY_STATUSES or status < 200:
                resp.release()
                permit.finish(outcome)
                _count(stats, failed)
                return web.StreamResponse(status=status, reason=resp.reason, headers=headers)

            length = resp.content_length
            if length is not None and length <= SMALL_BODY:
                try:
                    body = await resp.read()
                except _UPSTREAM_ERRORS as exc:
                    kind = classify_exception(exc)
                    permit.finish(_FAILURE if up.failures.counts(kind) else _IGNORED)
                    stats.failures += 1
                    return self._fallback_or(request, up, kind.value, _FAILURE_STATUS[kind], None)
                if "Content-Length" in headers:
                    del headers["Content-Length"]
                permit.finish(outcome)
                _count(stats, failed)
                if fill is not None:
                    fill.feed(body)
                    fill.commit(request.headers)
                return web.Response(status=status, reason=resp.reason, headers=headers, body=body)

            return await self._stream(request, up, resp, permit, outcome, headers, fill, streamed)
        except BaseException:
            # Anything unexpected (cancellation at shutdown included): the permit must not leak.
            permit.finish(_IGNORED)
            resp.close()
            raise

    async def _stream(
        self,
        request: web.BaseRequest,
        up: LiveUpstream,
        resp: aiohttp.ClientResponse,
        permit: _Permit,
        outcome: Outcome,
        headers: CIMultiDict[str],
        fill: CacheFill | None,
        streamed: RequestBody | None,
    ) -> web.StreamResponse:
        stats = up.stats
        out = web.StreamResponse(status=resp.status, reason=resp.reason, headers=headers)
        try:
            await out.prepare(request)
        except ConnectionError:
            resp.close()
            permit.finish(_IGNORED)
            stats.client_errors += 1
            return out
        content = resp.content
        while True:
            try:
                chunk = await content.readany()
            except _UPSTREAM_ERRORS as exc:
                kind = classify_exception(exc)
                resp.close()
                _abort_client(request)
                if streamed is not None and streamed.client_at_fault:
                    # The upstream answers as it reads, and the client stopped sending.
                    permit.finish(_IGNORED)
                    stats.client_errors += 1
                    return out
                permit.finish(_FAILURE if up.failures.counts(kind) else _IGNORED)
                stats.failures += 1
                log.debug("upstream %s: body broke off: %s (%r)", up.name, kind.value, exc)
                return out
            if not chunk:
                break
            if fill is not None:
                fill.feed(chunk)
            try:
                await out.write(chunk)
            except ConnectionError:
                resp.close()
                permit.finish(_IGNORED)
                stats.client_errors += 1
                return out
        resp.release()
        permit.finish(outcome)
        _count(stats, outcome is _FAILURE)
        if fill is not None:
            fill.commit(request.headers)
        with contextlib.suppress(ConnectionError):
            await out.write_eof()
        return out

    # ------------------------------------------------------------------------------------------------
    # Answers the proxy makes itself
    # ------------------------------------------------------------------------------------------------

    def _fallback_or(
        self,
        request: web.BaseRequest,
        up: LiveUpstream,
        reason: str,
        status: int,
        retry_after: float | None,
    ) -> web.Response:
        """The fallback for this upstream if it has one that applies, else a plain marked error."""
        static = up.static_fallback
        if static is not None:
            up.stats.fallback_static += 1
            headers = CIMultiDict(static.headers)
            headers[MARKER] = "fallback-static"
            headers[MARKER_REASON] = reason
            if retry_after is not None:
                headers["Retry-After"] = retry_after_header(retry_after)
            return web.Response(status=static.status, headers=headers, body=static.body)
        cache = up.cache
        if cache is not None and request.method in ("GET", "HEAD"):
            entry = cache.lookup(_cache_key(request), request.headers)
            if entry is not None:
                up.stats.fallback_cached += 1
                headers = CIMultiDict(entry.headers)
                headers[MARKER] = "fallback-cached"
                headers[MARKER_REASON] = reason
                headers["Age"] = str(max(0, int(cache.now() - entry.stored_at)))
                if retry_after is not None:
                    headers["Retry-After"] = retry_after_header(retry_after)
                return web.Response(
                    status=entry.status, reason=entry.reason, headers=headers, body=entry.body
                )
        headers = CIMultiDict({MARKER: reason, "Content-Type": "application/json"})
        fields: dict[str, object] = {"error": _MESSAGES.get(reason, reason), "upstream": up.name}
        if retry_after is not None:
            headers["Retry-After"] = retry_after_header(retry_after)
            fields["retryAfterSeconds"] = round(retry_after, 3) if math.isfinite(retry_after) else None
        return web.Response(status=status, headers=headers, body=_json_body(**fields))

    @staticmethod
    def _client_error(exc: BaseException, streamed: RequestBody | None = None) -> web.Response:
        """The client stalled or broke its own request body: 408/400, and the connection is closed."""
        cause = streamed.error if streamed is not None and streamed.error is not None else exc
        if isinstance(cause, ClientBodyError) and cause.__cause__ is not None:
            cause = cause.__cause__
        stalled = streamed is not None and streamed.error is None  # still waiting on the client
        status = 408 if stalled or isinstance(cause, TimeoutError) else 400
        resp = web.Response(
            status=status,
            headers={MARKER: "client-error", "Content-Type": "application/json"},
            body=_json_body(error="request body not received"),
        )
        resp.force_close()
        return resp


def _count(stats: UpstreamStats, failed: bool) -> None:
    if failed:
        stats.failures += 1
    else:
        stats.successes += 1


def _cache_key(request: web.BaseRequest) -> str:
    raw = request.raw_path
    return ResponseCache.key(raw if raw[:1] == "/" else request.rel_url.raw_path_qs, request.headers)


_MESSAGES: Final = {
    "open": "upstream circuit open",
    "bulkhead-full": "too many concurrent requests to upstream",
    "timeout": "upstream timed out",
    "connect-error": "cannot connect to upstream",
    "reset": "upstream connection broke",
}


def _abort_client(request: web.BaseRequest) -> None:
    """Close the client connection so a half-sent response is seen as broken, not complete."""
    transport = request.transport
    if transport is not None:
        transport.close()
