"""Keep-alive connections to the upstreams, for the fast path.

One `Pool` per (host, port), shared by every listener and kept across reloads. An idle connection is
taken last-in first-out (the warmest socket, the least likely to have been closed by the upstream's
own idle timer) and closed once idle longer than the pool's keep-alive. Opening a connection is the only
place the fast path creates a Task, once per connection, never per request.

While a connection carries a request, its bytes go to the response parser of that request's
`Exchange` (a fresh `httptools.HttpResponseParser` per attempt, so a response that ends early, like
the answer to HEAD, never leaves state behind for the next one).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import deque
from collections.abc import Callable
from typing import TYPE_CHECKING, Final

import httptools

if TYPE_CHECKING:
    from breakwater.proxy.fast.exchange import Exchange

__all__ = ["Pool", "Pools", "UpstreamConnection"]

log = logging.getLogger(__name__)

MAX_IDLE_PER_POOL: Final = 256


class UpstreamConnection(asyncio.Protocol):
    """One TCP connection to an upstream; carries one exchange at a time."""

    __slots__ = ("closed", "exchange", "idle_since", "parser", "pool", "served", "transport")

    def __init__(self, pool: Pool) -> None:
        self.pool = pool
        self.transport: asyncio.Transport | None = None
        self.exchange: Exchange | None = None
        self.parser: httptools.HttpResponseParser | None = None
        self.closed = False
        self.served = 0  # exchanges completed on it: > 0 means "reused" when the next one fails early
        self.idle_since = 0.0

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        exchange = self.exchange
        parser = self.parser
        if exchange is None or parser is None:
            self.close()  # bytes nobody asked for: this connection cannot be trusted any more
            return
        try:
            parser.feed_data(data)
        except httptools.HttpParserUpgrade:
            exchange.upstream_upgraded(self)
            return
        except httptools.HttpParserCallbackError as exc:
            if not exchange.parser_stopped(self, exc.__cause__, data):  # else a bug: fail this answer
                log.exception("error relaying an upstream's answer")
                exchange.upstream_malformed(self, exc)
            return
        except httptools.HttpParserError as exc:
            exchange.upstream_malformed(self, exc)
            return
        if not exchange.status and not exchange.head_growing(self, len(data)):  # (a head across reads)
            return
        exchange.flush_to_client()

    def eof_received(self) -> bool | None:
        return False  # close the transport: a half-closed upstream connection is not reused

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        exchange = self.exchange
        if exchange is not None:
            self.exchange = None
            exchange.upstream_lost(self)
        else:
            self.pool.forget(self)

    def pause_writing(self) -> None:
        if self.exchange is not None:
            self.exchange.upstream_paused(True)

    def resume_writing(self) -> None:
        if self.exchange is not None:
            self.exchange.upstream_paused(False)

    def close(self) -> None:
        self.closed = True
        self.exchange = None
        self.parser = None
        if self.transport is not None:
            self.transport.close()


class Pool:
    """Idle keep-alive connections to one (host, port)."""

    __slots__ = ("host", "idle", "keepalive", "port")

    def __init__(self, host: str, port: int, keepalive: float) -> None:
        self.host = host
        self.port = port
        self.keepalive = keepalive
        self.idle: deque[UpstreamConnection] = deque()

    def take(self) -> UpstreamConnection | None:
        idle = self.idle
        while idle:
            conn = idle.pop()
            if not conn.closed:
                return conn
        return None

    def give_back(self, conn: UpstreamConnection) -> None:
        conn.exchange = None
        conn.parser = None
        conn.served += 1
        if len(self.idle) >= MAX_IDLE_PER_POOL or conn.closed:
            conn.close()
            return
        conn.idle_since = time.monotonic()
        self.idle.append(conn)

    def forget(self, conn: UpstreamConnection) -> None:
        with contextlib.suppress(ValueError):
            self.idle.remove(conn)

    def connect(self, on_done: Callable[[UpstreamConnection | None, BaseException | None], None]) -> None:
        """Open a new connection; `on_done(conn, None)` or `on_done(None, error)` when that is known."""
        loop = asyncio.get_running_loop()
        task = loop.create_task(
            loop.create_connection(lambda: UpstreamConnection(self), self.host, self.port)
        )

        def finished(t: asyncio.Task[tuple[asyncio.Transport, UpstreamConnection]]) -> None:
            if t.cancelled():
                on_done(None, asyncio.CancelledError())
                return
            error = t.exception()
            if error is not None:
                on_done(None, error)
                return
            on_done(t.result()[1], None)

        task.add_done_callback(finished)

    def expire(self, now: float) -> None:
        idle = self.idle
        while idle and (idle[0].closed or now - idle[0].idle_since > self.keepalive):
            idle.popleft().close()

    def close(self) -> None:
        while self.idle:
            self.idle.popleft().close()


class Pools:
    """Every pool of a sidecar, by (host, port)."""

    __slots__ = ("_pools", "keepalive")

    def __init__(self, keepalive: float) -> None:
        self.keepalive = keepalive
        self._pools: dict[tuple[str, int], Pool] = {}

    def get(self, host: str, port: int) -> Pool:
        key = (host, port)
        pool = self._pools.get(key)
        if pool is None:
            pool = self._pools[key] = Pool(host, port, self.keepalive)
        return pool

    def expire(self) -> None:
        now = time.monotonic()
        for pool in self._pools.values():
            pool.expire(now)

    def close(self) -> None:
        for pool in self._pools.values():
            pool.close()
        self._pools.clear()
