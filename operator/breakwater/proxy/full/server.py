"""The aiohttp server of the full path: one `web.Server` per listener, with the sidecar's own answers
to malformed requests (400, 414 or 431, one rate-limited WARNING line per kind, never a traceback).

It serves a listener outright when the fast path is off, and otherwise the connections the fast path
hands over (`hand_off`: the transport and the bytes the client already sent).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from typing import Any

from aiohttp import web
from aiohttp.http_exceptions import HttpProcessingError, LineTooLong
from aiohttp.web_protocol import RequestHandler

from breakwater.proxy.answers import plain
from breakwater.proxy.full.headers import to_response
from breakwater.proxy.logs import RateLimitedLog

__all__ = ["FullServer", "hand_off"]

log = logging.getLogger(__name__)
bad_requests_log = RateLimitedLog(log)

Handler = Callable[[web.BaseRequest], Awaitable[web.StreamResponse]]


def _status_of(exc: HttpProcessingError) -> tuple[int, str]:
    text = str(exc.message or exc)
    if isinstance(exc, LineTooLong):
        line = bytes(exc.args[0]) if isinstance(exc.args[0], bytes | bytearray) else b""
        if line[:1] == b"/" or b"://" in line[:16]:  # aiohttp reports the target's line like a field's
            return 414, "request target too long"
        return 431, "header field too long"
    if "Too many headers" in text:
        return 431, "too many header fields"
    return 400, text.split(":", 1)[0] or type(exc).__name__


class _RequestHandler(RequestHandler):
    def handle_error(
        self,
        request: web.BaseRequest,
        status: int = 500,
        exc: BaseException | None = None,
        message: str | None = None,
    ) -> web.StreamResponse:
        if not isinstance(exc, HttpProcessingError):
            return super().handle_error(request, status, exc, message)
        status, reason = _status_of(exc)
        bad_requests_log.warning(reason, "malformed request from a client: %s (%d)", reason, status)
        resp = to_response(plain(status, "bad-request", reason + "\n"))
        resp.force_close()
        return resp


class FullServer(web.Server):
    """`web.Server` whose connections answer malformed requests the sidecar's way."""

    def __init__(self, handler: Handler, *, idle_timeout: float, **kwargs: Any) -> None:
        super().__init__(
            handler,
            handler_cancellation=False,
            access_log=None,
            keepalive_timeout=idle_timeout,
            max_line_size=8190,
            max_field_size=8190,
            max_headers=128,
            lingering_time=2.0,
            **kwargs,
        )

    def __call__(self) -> RequestHandler:
        return _RequestHandler(self, loop=self._loop, **self._kwargs)


def hand_off(server: FullServer, transport: asyncio.Transport, data: bytes) -> None:
    """Give a client connection to `server`, with the bytes it already sent."""
    protocol = server()
    transport.set_protocol(protocol)
    protocol.connection_made(transport)
    if data:
        protocol.data_received(data)
    transport.resume_reading()
