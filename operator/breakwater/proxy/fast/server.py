"""The client side of the fast path: one `ClientConnection` protocol per accepted connection.

Requests are parsed by httptools (llhttp, strict: Content-Length with Transfer-Encoding, two
Content-Lengths, obs-fold, invalid chunk sizes and bare LF are all parse errors) and answered one at
a time, in order: a pipelined request waits, parsed, with the connection's reading paused, until the
answer before it is complete. Every malformed request gets 400 (a head over `MAX_HEAD_BYTES` or
`MAX_FIELDS` 431 whatever else is wrong with it, a target over `MAX_TARGET_BYTES` 414, a transfer
coding other than chunked 501) with the connection closed, and one rate-limited WARNING line per kind
of error. The header fields the Cached fallback reads (``Authorization``, ``Cookie``,
``Cache-Control``) are noted as they are parsed, so its tee never scans the header lines again.

An upgrade request (``Connection: upgrade``) or a ``CONNECT`` is handed to the full path: once the
answers before it are written, the connection's transport is given to an aiohttp protocol together
with the request's head and the bytes that followed it, and stays there.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import deque
from typing import TYPE_CHECKING, Final

import httptools

from breakwater.proxy.answers import MARKER, Answer, plain
from breakwater.proxy.cache import CREDENTIALS_SEPARATOR, combined
from breakwater.proxy.fast.exchange import Exchange
from breakwater.proxy.fast.request import RequestHead
from breakwater.proxy.fast.wire import (
    KIND_AUTHORIZATION,
    KIND_CONNECTION,
    KIND_CONTENT_LENGTH,
    KIND_COOKIE,
    KIND_EXPECT,
    KIND_HOST,
    KIND_PROXY_CONNECTION,
    KIND_TRANSFER_ENCODING,
    REQUEST_KINDS,
    HeaderLines,
    MarkedErrors,
    drop_nominated,
    render_answer,
)
from breakwater.proxy.logs import RateLimitedLog

if TYPE_CHECKING:
    from breakwater.proxy.fast.listener import FastListener

__all__ = ["MAX_HEAD_BYTES", "MAX_TARGET_BYTES", "ClientConnection", "RequestHead"]

log = logging.getLogger(__name__)
_MARKED_ERRORS = MarkedErrors()
bad_requests_log = RateLimitedLog(log)

MAX_HEAD_BYTES: Final = 16 * 1024
"""A request head (request line and header fields) larger than this is answered 431."""
MAX_TARGET_BYTES: Final = 8 * 1024
MAX_FIELDS: Final = 100
_TOO_LARGE: Final = plain(431, "bad-request", "request header fields too large\n")
_METHODS: dict[bytes, str] = {}


class ClientConnection(asyncio.Protocol):
    """One client connection of a fast-path listener."""

    __slots__ = (
        "busy",
        "close_after",
        "current",
        "exchange",
        "handoff",
        "head_bytes",
        "in_head",
        "last_active",
        "listener",
        "loop",
        "parser",
        "paused",
        "pools",
        "queue",
        "req",
        "transport",
    )

    def __init__(self, listener: FastListener) -> None:
        self.listener = listener
        self.pools = listener.engine.pools
        self.loop = asyncio.get_running_loop()
        self.transport: asyncio.Transport | None = None
        self.parser: httptools.HttpRequestParser | None = httptools.HttpRequestParser(self)
        self.exchange: Exchange | None = Exchange(self)
        self.req: RequestHead | None = None  # the one being parsed
        self.current: RequestHead | None = None  # the one being answered
        self.queue: deque[RequestHead] = deque()
        self.handoff: list[bytes] | None = None
        self.busy = False
        self.close_after = False
        self.in_head = False
        self.paused = False
        self.head_bytes = 0
        self.last_active = time.monotonic()

    # -- transport events --------------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        self.listener.connections.add(self)

    def connection_lost(self, exc: Exception | None) -> None:
        self.listener.connections.discard(self)
        self.transport = None
        if self.busy and self.exchange is not None:
            self.exchange.client_lost()
        self.queue.clear()
        self._let_go()

    def _let_go(self) -> None:
        """Drop the parser and the exchange, which both refer back to this connection: left to the
        cyclic GC, every connection closed since its last full pass would still hold its memory (and
        the sidecar's RSS would grow with the connections it has seen)."""
        self.parser = None
        self.exchange = None

    def pause_writing(self) -> None:
        if self.exchange is not None:
            self.exchange.client_paused(True)

    def resume_writing(self) -> None:
        if self.exchange is not None:
            self.exchange.client_paused(False)

    def data_received(self, data: bytes) -> None:
        if self.handoff is not None:
            self.handoff.append(data)
            return
        parser = self.parser
        if parser is None:
            return
        if self.in_head:  # a head still incomplete after earlier reads: bound what it may grow to
            self.head_bytes += len(data)
            if self.head_bytes > 4 * MAX_HEAD_BYTES:
                req = self.req
                if req is not None and not req.lines and not req.raw_specials:  # in the request line
                    self._refuse(414, "bad-request", "request target too long")
                else:
                    self._refuse(431, "bad-request", "request header fields too large")
                return
        try:
            parser.feed_data(data)
        except httptools.HttpParserUpgrade as upgrade:
            self._hand_off(data[upgrade.args[0] :])
        except httptools.HttpParserError as exc:
            if self.transport is not None and not self.transport.is_closing():
                reason = str(exc).split(":", 1)[0] or type(exc).__name__
                self._refuse(400, "bad-request", reason)

    # -- httptools callbacks -----------------------------------------------------------------------

    # (No on_message_begin: the request begins at its target's first bytes, one callback fewer.)

    def on_url(self, url: bytes) -> None:
        if self.in_head:  # the rest of a target split across reads
            req = self.req
            assert req is not None
            req.target += url
        else:
            self.in_head = True
            self.head_bytes = 0
            self.req = req = RequestHead(url)
        if len(req.target) > MAX_TARGET_BYTES:
            req.problem = plain(414, "target-too-long", "the request target is too long\n")

    def on_header(self, name: bytes, value: bytes) -> None:
        req = self.req
        assert req is not None
        kind = REQUEST_KINDS[name]
        line = b"%b: %b\r\n" % (name, value)
        if not kind:
            req.lines.append(line)
            return
        if kind >= KIND_AUTHORIZATION:  # end-to-end, noted for the cache
            req.lines.append(line)
            text = value.strip().decode("latin-1")  # every line of each keys the cache, as `combined`
            if kind == KIND_AUTHORIZATION:
                req.authorization = (
                    text if (a := req.authorization) is None else a + CREDENTIALS_SEPARATOR + text
                )
            elif kind == KIND_COOKIE:
                req.cookie = text if (c := req.cookie) is None else c + CREDENTIALS_SEPARATOR + text
            else:
                req.cache_control = value if (cc := req.cache_control) is None else cc + b", " + value
            return
        req.raw_specials.append(line)
        if kind == KIND_HOST:
            req.host = value
        elif kind == KIND_CONTENT_LENGTH:
            req.content_length = int(value)
        elif kind == KIND_TRANSFER_ENCODING:
            if req.chunked or value.strip().lower() != b"chunked":
                req.problem = plain(501, "bad-request", "only the chunked transfer coding is supported\n")
            req.chunked = True
        elif kind == KIND_EXPECT:
            req.expect_continue = value.strip().lower() == b"100-continue"
        elif kind == KIND_CONNECTION:
            req.connection_field = True
            if value.lower() not in (b"keep-alive", b"close", b"upgrade"):
                req.nominated += 1
                req.lines.append(b"Connection: %b\r\n" % value)
        elif kind == KIND_PROXY_CONNECTION:
            req.connection_field = True

    def on_headers_complete(self) -> None:
        self.in_head = False
        req = self.req
        assert req is not None
        parser = self.parser
        assert parser is not None  # this callback comes from it
        lines = req.lines
        specials = req.raw_specials
        # The head's size, counted here rather than per field: each field is kept once as the line
        # ``name: value\r\n`` (a nominating Connection field twice: its copy in `lines` not counted).
        size = sum(map(len, lines)) + sum(map(len, specials))
        if req.nominated:
            size -= sum(len(line) for line in lines if line.startswith(b"Connection:"))
        if size > MAX_HEAD_BYTES or len(lines) + len(specials) - req.nominated > MAX_FIELDS:
            req.problem = _TOO_LARGE  # whatever else is wrong with it
        method = parser.get_method()
        name = _METHODS.get(method)
        if name is None:
            name = _METHODS[method] = method.decode("ascii", "replace")
        req.method = name
        req.method_bytes = method
        req.keep_alive = keep_alive = parser.should_keep_alive()
        # Without a Connection or Proxy-Connection field, llhttp keeps a request's connection alive
        # exactly when its version is 1.1 (of the 0.9, 1.0, 1.1 and 2.0 it accepts): known without
        # asking the parser, which formats the version string anew each time.
        version = "1.1" if keep_alive and not req.connection_field else parser.get_http_version()
        req.version = version
        req.http11 = http11 = version == "1.1"
        if not http11:
            req.expect_continue = False
        if req.content_length <= 0 and not req.chunked:
            req.complete = True  # no body: answerable (and done reading) from its head alone
        if req.nominated:
            drop_nominated(lines)
            # What Connection listed is not sent on: the cache's notes follow the lines kept.
            kept = HeaderLines(lines)
            req.authorization = combined(kept, "Authorization", CREDENTIALS_SEPARATOR)
            req.cookie = combined(kept, "Cookie", CREDENTIALS_SEPARATOR)
            cache_control = combined(kept, "Cache-Control")
            req.cache_control = None if cache_control is None else cache_control.encode("latin-1")
        if parser.should_upgrade():
            req.upgrade = True  # the parser stops right after this callback: see `_hand_off`
            return
        if self.busy or self.queue:
            self.queue.append(req)
            self._pause(True)
            return
        self._begin(req)

    def on_body(self, body: bytes) -> None:
        req = self.req
        assert req is not None
        if req.started and self.current is req and self.exchange is not None:
            self.exchange.request_body(body)
        elif not req.started:  # kept framed as it will be sent (the parser de-chunks: re-chunk it)
            req.body.append(b"%x\r\n%b\r\n" % (len(body), body) if req.chunked else body)

    def on_message_complete(self) -> None:
        req = self.req
        assert req is not None
        req.complete = True
        if req.chunked:  # the last chunk (a body of known length needs no end)
            if req.started:
                if self.current is req and self.exchange is not None:
                    self.exchange.request_complete()
            else:
                req.body.append(b"0\r\n\r\n")

    # -- answering ---------------------------------------------------------------------------------

    def _begin(self, req: RequestHead) -> None:
        self.busy = True
        self.current = req
        req.started = True
        if req.problem is not None:
            self.close_after = True
            self.answer(req.problem)
            return
        route = self.listener.route(req)
        if isinstance(route, Answer):
            self.answer(route)
            return
        assert self.exchange is not None  # a connection lost begins nothing
        self.exchange.begin(req, route)

    def answer(self, answer: Answer) -> None:
        """Write an answer the proxy made itself and end the request."""
        req = self.current
        head_only = req is not None and req.method == "HEAD"
        close = self.close_after or req is None or not req.keep_alive or not req.complete
        self.write(render_answer(answer, head_only=head_only, close=close))
        if self.exchange is None or self.exchange.up is None:  # no exchange began (refused early)
            self.exchange_ended()

    def answer_marked_error(self, name: str, reason: str, status: int, retry_after: float | None) -> None:
        """`answer` of ``answers.marked_error(name, ...)``, rendered from parts made once (a rejection
        while a breaker is open costs little more than its write)."""
        req = self.current
        head_only = req is not None and req.method == "HEAD"
        close = self.close_after or req is None or not req.keep_alive or not req.complete
        self.write(_MARKED_ERRORS.render(name, reason, status, retry_after, head_only=head_only, close=close))

    def client_error(self, status: int, message: str) -> None:
        self.close_after = True
        answer = Answer(status, [(MARKER, "client-error"), ("Content-Type", "application/json")],
                        b'{"error":"%s"}' % message.encode())  # fmt: skip
        self.write(render_answer(answer, close=True))

    def exchange_ended(self) -> None:
        """The current request is answered (or given up): go on with the next one, or close."""
        req = self.current
        self.current = None
        self.busy = False
        self.last_active = time.monotonic()
        transport = self.transport
        if transport is None:
            return
        if self.close_after or req is None or not req.keep_alive or not req.complete:
            transport.close()
            return
        if self.queue or self.handoff is not None:
            self.loop.call_soon(self._next)
        elif self.paused:
            self._pause(False)

    def _next(self) -> None:
        if self.busy or self.transport is None:
            return
        if self.queue:
            self._begin(self.queue.popleft())
            return
        if self.handoff is not None:
            self._finish_handoff()
            return
        if self.paused:
            self._pause(False)

    def write(self, data: bytes) -> None:
        if self.transport is not None:
            self.transport.write(data)

    def abort(self) -> None:
        """Close at once so that a half-sent answer is seen as broken, not complete."""
        self.close_after = True
        if self.transport is not None:
            self.transport.abort()

    def pause_body(self, paused: bool) -> None:
        """The upstream cannot take more of the request body now."""
        self._pause(paused)

    def _pause(self, paused: bool) -> None:
        transport = self.transport
        if transport is None or paused == self.paused:
            return
        self.paused = paused
        if paused:
            transport.pause_reading()
        else:
            transport.resume_reading()

    def _refuse(self, status: int, marker: str, reason: str) -> None:
        bad_requests_log.warning(reason, "malformed request from a client: %s (%d)", reason, status)
        self.listener.bad_request(status)
        self.close_after = True
        self.queue.clear()
        answer = render_answer(plain(status, marker, reason + "\n"), close=True)
        exchange = self.exchange
        if self.busy and exchange is not None:  # the request in progress broke: it goes no further
            self.handoff = None
            if not exchange.head_sent:  # else the only way left to say so is to close
                self.write(answer)
            exchange.client_lost()
        else:
            self.write(answer)
        if self.transport is not None:
            self.transport.close()

    # -- handing a connection to the full path -----------------------------------------------------

    def _hand_off(self, rest: bytes) -> None:
        req = self.req
        assert req is not None
        assert req.upgrade
        self.handoff = [req.original_head(), rest]
        self._pause(True)
        if not self.busy and not self.queue:
            self._finish_handoff()

    def _finish_handoff(self) -> None:
        transport = self.transport
        parts = self.handoff
        if transport is None or parts is None:
            return
        self.handoff = None
        self.listener.connections.discard(self)
        self.transport = None
        self._let_go()
        self.listener.hand_off(transport, b"".join(parts))
