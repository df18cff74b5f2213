"""The admin listener's HTTP/1.1 server: httptools on an asyncio protocol, one request at a time per
connection, bodies up to `admin.MAX_BODY` (else 413), idle connections closed after `IDLE_SECONDS`.

The kubelet probes it and Prometheus scrapes it in every pod, so it must not cost a web framework's
memory; what it serves is `breakwater.proxy.admin`'s.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from typing import Final

import httptools

from breakwater.proxy.admin import MAX_BODY, AdminAnswer, AdminRequest
from breakwater.proxy.logs import RateLimitedLog

__all__ = ["AdminServer"]

log = logging.getLogger("breakwater.proxy.admin")
bad_requests_log = RateLimitedLog(log)

IDLE_SECONDS: Final = 15.0
_REASONS: Final = {
    200: "OK",
    400: "Bad Request",
    401: "Unauthorized",
    403: "Forbidden",
    404: "Not Found",
    405: "Method Not Allowed",
    409: "Conflict",
    413: "Content Too Large",
    422: "Unprocessable Content",
    500: "Internal Server Error",
    503: "Service Unavailable",
}

Handler = Callable[[AdminRequest], Awaitable[AdminAnswer]]


def _render(answer: AdminAnswer, *, close: bool) -> bytes:
    lines = [f"HTTP/1.1 {answer.status} {_REASONS.get(answer.status, 'Unknown')}\r\n"]
    lines.extend(f"{name}: {value}\r\n" for name, value in answer.headers)
    lines.append(f"Content-Length: {len(answer.body)}\r\n")
    if close:
        lines.append("Connection: close\r\n")
    lines.append("\r\n")
    return "".join(lines).encode("latin-1") + answer.body


class _AdminConnection(asyncio.Protocol):
    def __init__(self, server: AdminServer) -> None:
        self._server = server
        self._parser = httptools.HttpRequestParser(self)
        self._transport: asyncio.Transport | None = None
        self._url = b""
        self._headers: dict[str, str] = {}
        self._body: list[bytes] = []
        self._size = 0
        self._too_large = False
        self._busy = False
        self._idle: asyncio.TimerHandle | None = None
        self._task: asyncio.Task[None] | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = transport  # type: ignore[assignment]
        self._server.connections.add(self)
        self._arm_idle()

    def connection_lost(self, exc: Exception | None) -> None:
        self._server.connections.discard(self)
        self._transport = None
        if self._idle is not None:
            self._idle.cancel()

    def data_received(self, data: bytes) -> None:
        try:
            self._parser.feed_data(data)
        except httptools.HttpParserUpgrade:
            self._answer(AdminAnswer(400, b"no upgrades here\n"), close=True)
        except httptools.HttpParserError as exc:
            reason = str(exc).split(":", 1)[0] or type(exc).__name__
            bad_requests_log.warning(reason, "malformed admin request: %s", reason)
            self._answer(AdminAnswer(400, b"bad request\n"), close=True)

    def on_message_begin(self) -> None:
        self._url = b""
        self._headers = {}
        self._body = []
        self._size = 0
        self._too_large = False

    def on_url(self, url: bytes) -> None:
        self._url += url

    def on_header(self, name: bytes, value: bytes) -> None:
        self._headers[name.decode("latin-1").lower()] = value.decode("latin-1")

    def on_body(self, body: bytes) -> None:
        self._size += len(body)
        if self._size > MAX_BODY:
            self._too_large = True
        elif not self._too_large:
            self._body.append(body)

    def on_message_complete(self) -> None:
        if self._transport is None:
            return
        if self._too_large:
            self._answer(AdminAnswer(413, b'{"error":"the body is over 1 MiB"}'), close=True)
            return
        if self._idle is not None:
            self._idle.cancel()
        self._busy = True
        self._transport.pause_reading()  # one request at a time
        peer = self._transport.get_extra_info("peername")
        request = AdminRequest(
            method=self._parser.get_method().decode("ascii", "replace"),
            path=self._url.decode("latin-1"),
            headers=self._headers,
            body=b"".join(self._body),
            peer=str(peer[0]) if peer else "",
        )
        keep_alive = self._parser.should_keep_alive()
        self._task = asyncio.get_running_loop().create_task(self._serve(request, keep_alive))

    async def _serve(self, request: AdminRequest, keep_alive: bool) -> None:
        try:
            answer = await self._server.handler(request)
        except Exception:
            log.exception("admin request %s %s failed", request.method, request.path)
            answer = AdminAnswer(500, b'{"error":"internal error"}')
        self._busy = False
        self._answer(answer, close=not keep_alive)
        if keep_alive and self._transport is not None:
            self._transport.resume_reading()
            self._arm_idle()

    def _answer(self, answer: AdminAnswer, *, close: bool) -> None:
        transport = self._transport
        if transport is None:
            return
        transport.write(_render(answer, close=close))
        if close:
            transport.close()

    def _arm_idle(self) -> None:
        if self._idle is not None:
            self._idle.cancel()
        self._idle = asyncio.get_running_loop().call_later(IDLE_SECONDS, self._close_idle)

    def _close_idle(self) -> None:
        if not self._busy and self._transport is not None:
            self._transport.close()

    def close(self) -> None:
        if self._transport is not None:
            self._transport.close()
        if self._task is not None:
            self._task.cancel()


class AdminServer:
    """The admin listener; `handler` answers each request."""

    def __init__(self, handler: Handler) -> None:
        self.handler = handler
        self.connections: set[_AdminConnection] = set()
        self._server: asyncio.Server | None = None
        self.port: int | None = None

    async def start(self, address: str, port: int) -> None:
        loop = asyncio.get_running_loop()
        self._server = await loop.create_server(lambda: _AdminConnection(self), address, port, backlog=128)
        self.port = self._server.sockets[0].getsockname()[1]

    async def stop(self) -> None:
        server, self._server = self._server, None
        if server is not None:
            server.close()
        for conn in list(self.connections):
            conn.close()
        self.port = None
