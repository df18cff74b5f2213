"""The full path: one client request through bulkhead, breaker and retries to its upstream, on aiohttp.

`FullExchange.forward` takes an aiohttp request and a compiled `LiveUpstream` and returns the response.
It serves what the fast path (`proxy/fast/`) hands over (upgrade requests; CONNECT is
`proxy/full/http_proxy.py`'s), and every request when the fast path is switched off. Its semantics
are the fast path's, with the same breaker, counters, answers and logs:

Semantics (what a reader of the code should not have to reverse-engineer):

- Streaming: request and response bodies flow through in chunks. Bodies whose length is known and at
  most `SMALL_BODY` bytes are read in one piece instead (one write instead of two, and such a request
  can be retried); nothing larger is ever held whole.
- Deadline: ``timeoutSeconds`` bounds the whole call, from the request's arrival (its wait in the
  bulkhead's line included) to the last byte of the answer, retries included; ``perTryTimeoutSeconds``
  bounds each try within it. A client that has not sent its body by then gets 408.
- The breaker sees one result per attempt: the status class (``failures.statusCodes``) or the transport
  failure (connect error / timeout / reset, each countable or not), with the time until the response
  headers as its duration. A response whose body breaks off counts as a reset. A client that goes away
  or stalls its own upload makes the attempt ``IGNORED`` (it says nothing about the upstream).
- Answers the proxy makes itself are `breakwater.proxy.answers`'; an upstream's own error response is
  passed through as it is, and a ``101`` the proxy never asked for is an invalid answer (502), as is a
  field name that is no token (aiohttp's lenient parser takes ``Content-Length : 5`` as a field named
  ``Content-Length ``, which a proxy must not pass on: RFC 9112 section 5.1).
- Retries: only idempotent methods (RFC 9110), only with a replayable body, only for the configured
  conditions, only while the retry budget allows, with a short jittered backoff inside the deadline.
  Each try asks the breaker again; a rejection ends the retries.
- Once response headers were sent, a broken upstream body is passed on by closing the client
  connection (the client sees a truncated message, never a silently short "complete" one).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import re
from collections.abc import Awaitable
from typing import Final

import aiohttp
from aiohttp import web
from multidict import CIMultiDict
from yarl import URL

from breakwater.breaker import REJECTED, Breaker, Outcome
from breakwater.proxy.answers import MARKER, Answer, fallback_or
from breakwater.proxy.cache import CacheFill, ResponseCache
from breakwater.proxy.classifiers import IDEMPOTENT_METHODS, FailureKind
from breakwater.proxy.full.headers import end_to_end, to_response
from breakwater.proxy.full.request_body import CONTINUE, ClientBodyError, RequestBody
from breakwater.proxy.stats import UpstreamStats
from breakwater.proxy.upstream import LiveUpstream

__all__ = ["SMALL_BODY", "FullExchange", "classify_exception"]

log = logging.getLogger(__name__)

SMALL_BODY: Final = 64 * 1024
"""Bodies of known length up to this size are read whole (and requests with them are retriable)."""

_SUCCESS: Final = Outcome.SUCCESS
_FAILURE: Final = Outcome.FAILURE
_IGNORED: Final = Outcome.IGNORED
_EMPTY_BODY_STATUSES: Final = frozenset({204, 304})


_URL_CACHE: Final = 1024
_UPSTREAM_ERRORS: Final = (aiohttp.ClientError, TimeoutError, OSError, ClientBodyError)
_FAILURE_STATUS: Final = {FailureKind.CONNECT: 502, FailureKind.RESET: 502, FailureKind.TIMEOUT: 504}
_BACKOFF_BASE: Final = 0.025
_BACKOFF_CAP: Final = 0.25
_FIELD_NAME: Final = re.compile(rb"[!#$%&'*+\-.^_`|~0-9A-Za-z]+")


def classify_exception(exc: BaseException) -> FailureKind:
    """Which kind of transport failure an aiohttp client exception is."""
    if isinstance(exc, aiohttp.ConnectionTimeoutError):
        return FailureKind.CONNECT
    if isinstance(exc, TimeoutError):
        return FailureKind.TIMEOUT
    if isinstance(exc, aiohttp.ClientConnectorError):
        return FailureKind.CONNECT
    return FailureKind.RESET


def upstream_url(up: LiveUpstream, path_qs: str) -> URL:
    """The upstream URL for a request target (parsed once per distinct target, a bounded cache)."""
    urls = up.full_path
    if not isinstance(urls, dict):
        urls = up.full_path = {}
    url = urls.get(path_qs)
    if url is None:
        if len(urls) >= _URL_CACHE:
            urls.clear()
        url = urls[path_qs] = URL(up.origin + path_qs, encoded=True)
    return url


def _path_qs(request: web.BaseRequest) -> str:
    raw = request.raw_path
    return raw if raw[:1] == "/" else request.rel_url.raw_path_qs


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


class FullExchange:
    """Forwards requests with one shared `aiohttp.ClientSession` (its pool keeps upstream connections)."""

    __slots__ = ("_session",)

    def __init__(self, session: aiohttp.ClientSession) -> None:
        self._session = session

    # ------------------------------------------------------------------------------------------------
    # Entry point
    # ------------------------------------------------------------------------------------------------

    async def forward(
        self,
        request: web.BaseRequest,
        up: LiveUpstream,
        *,
        host: str | None = None,
        path_qs: str | None = None,
    ) -> web.StreamResponse:
        """Answer `request` from upstream `up`.

        The ``Host`` header sent is `host` (the forward proxy's target authority), else the upstream's
        ``host:port``; `path_qs` is the target to send, else the request's own.
        """
        stats = up.stats
        stats.full_path += 1
        if up.breaker.reject_now():  # open: answered before it takes a bulkhead slot or budget share
            stats.rejected += 1
            return self._fallback_or(request, up, "open", 503, up.breaker.retry_after())
        bulkhead = up.bulkhead
        deadline = asyncio.get_running_loop().time() + up.timeout
        if bulkhead is not None and not bulkhead.try_enter() and not await bulkhead.enter(up.timeout):
            stats.bulkhead_full += 1
            return self._fallback_or(request, up, "bulkhead-full", 503, None)
        stats.in_flight += 1
        try:
            return await self._forward(request, up, host, path_qs or _path_qs(request), deadline)
        finally:
            stats.in_flight -= 1
            if bulkhead is not None:
                bulkhead.leave()

    # ------------------------------------------------------------------------------------------------
    # The attempt loop
    # ------------------------------------------------------------------------------------------------

    async def _forward(
        self, request: web.BaseRequest, up: LiveUpstream, host: str | None, path_qs: str, deadline: float
    ) -> web.StreamResponse:
        stats = up.stats
        breaker = up.breaker
        method = request.method
        headers = end_to_end(request.headers)
        headers["Host"] = host or up.host_header
        loop = asyncio.get_running_loop()
        expect = False
        if "Expect" in headers:
            expect = headers.popall("Expect")[0].lower() == "100-continue" and request.version >= (1, 1)

        data: bytes | RequestBody | None = None
        streamed: RequestBody | None = None
        if request.body_exists:
            length = request.content_length
            if length is not None and length <= SMALL_BODY:
                try:
                    data = await self._read_small_body(request, deadline - loop.time(), expect)
                except ClientBodyError as exc:
                    stats.client_errors += 1
                    return self._client_error(exc)
            else:
                data = streamed = RequestBody(request, expect, deadline)

        url = upstream_url(up, path_qs)

        retry = up.retry
        budget = up.budget
        may_retry = budget is not None and streamed is None and method in IDEMPOTENT_METHODS
        if budget is not None:
            budget.record_request()
        attempt = 0
        while True:
            attempt += 1
            token = breaker.try_acquire()
            if token == REJECTED:
                stats.rejected += 1
                return self._fallback_or(request, up, "open", 503, breaker.retry_after())
            start = loop.time()
            permit = _Permit(breaker, token, 0.0)
            left = deadline - start
            if left <= 0:
                permit.finish(_FAILURE if up.failures.timeouts else _IGNORED)
                stats.failures += 1
                return self._fallback_or(request, up, "timeout", 504, None)
            per_try = retry.per_try_timeout
            timeout = aiohttp.ClientTimeout(total=left if per_try is None else min(left, per_try))
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
                if may_retry and attempt < retry.attempts and kind in retry.kinds and loop.time() < deadline:
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
            # An upgrade the proxy never asked for (interim answers are not seen here), or a field name
            # that is no token.
            if status < 200 or not all(_FIELD_NAME.fullmatch(name) for name, _ in resp.raw_headers):
                resp.close()
                permit.finish(_FAILURE if up.failures.resets else _IGNORED)
                stats.failures += 1
                log.debug("upstream %s: invalid answer (%d)", up.name, status)
                return self._fallback_or(request, up, FailureKind.RESET.value, 502, None)
            failed = up.failures.is_failure_status(status)
            if may_retry and attempt < retry.attempts and retry.retries_status(status):
                delay = self._retry_delay(up, attempt, deadline)
                if delay is not None:
                    permit.finish(_FAILURE if failed else _SUCCESS)
                    resp.close()
                    await asyncio.sleep(delay)
                    continue
            return await self._relay(request, up, resp, permit, failed, streamed, deadline)

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
        deadline: float,
    ) -> web.StreamResponse:
        stats = up.stats
        status = resp.status
        method = request.method
        headers = end_to_end(resp.headers)
        fill: CacheFill | None = None
        cache = up.cache
        # Keyed on what went upstream: a field that Connection nominated (a Cookie, say) was not sent.
        forwarded = end_to_end(request.headers) if cache is not None and not failed else None
        if cache is not None and forwarded is not None and ResponseCache.request_storable(method, forwarded):
            fill = cache.begin(
                ResponseCache.key(_path_qs(request), forwarded),
                status,
                headers,  # end to end: a replayed answer carries no hop-by-hop field of this one
                resp.content_length,
            )
            if fill is not None:
                fill.reason = resp.reason or ""
        outcome = _FAILURE if failed else _SUCCESS
        try:
            if method == "HEAD" or status in _EMPTY_BODY_STATUSES:
                resp.release()
                permit.finish(outcome)
                _count(stats, failed)
                return web.StreamResponse(status=status, reason=resp.reason, headers=headers)

            length = resp.content_length
            if length is not None and length <= SMALL_BODY:
                try:
                    async with asyncio.timeout_at(deadline):
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

            return await self._stream(request, up, resp, permit, outcome, headers, fill, streamed, deadline)
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
        deadline: float,
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
                async with asyncio.timeout_at(deadline):
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

    @staticmethod
    def _fallback_or(
        request: web.BaseRequest, up: LiveUpstream, reason: str, status: int, retry_after: float | None
    ) -> web.Response:
        """The fallback for this upstream if it has one that applies, else a plain marked error."""
        answer: Answer = fallback_or(
            up,
            reason,
            status,
            retry_after,
            method=request.method,
            path_qs=_path_qs(request),
            request_headers=end_to_end(request.headers),  # as the cache keyed them (`_relay`)
        )
        return to_response(answer)

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
            body=b'{"error":"request body not received"}',
        )
        resp.force_close()
        return resp


def _count(stats: UpstreamStats, failed: bool) -> None:
    if failed:
        stats.failures += 1
    else:
        stats.successes += 1


def _abort_client(request: web.BaseRequest) -> None:
    """Close the client connection so a half-sent response is seen as broken, not complete."""
    transport = request.transport
    if transport is not None:
        transport.close()
