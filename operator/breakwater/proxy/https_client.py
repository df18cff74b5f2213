"""A one-request HTTPS (or HTTP) client on asyncio streams, for the report channel's rare calls.

The sidecar asks the operator for a session once per token lifetime and fetches a config once per
policy edit: a connection per call (``Connection: close``), a bounded answer, a deadline. It replaces
aiohttp's client, whose import alone would cost every pod about 12 MB of RSS.
"""

from __future__ import annotations

import asyncio
import ssl
from urllib.parse import urlencode, urlsplit

import httptools

__all__ = ["MAX_ANSWER", "HttpAnswer", "HttpClientError", "request"]

MAX_ANSWER = 4 * 1024 * 1024


class HttpClientError(OSError):
    """The call could not be made or its answer not read (connect error, TLS, malformed, too large)."""


class HttpAnswer:
    __slots__ = ("body", "status")

    def __init__(self, status: int, body: bytes) -> None:
        self.status = status
        self.body = body

    @property
    def text(self) -> str:
        return self.body.decode("utf-8", "replace")


class _Reader:
    def __init__(self) -> None:
        self.parser = httptools.HttpResponseParser(self)
        self.body: list[bytes] = []
        self.size = 0
        self.done = False

    def on_body(self, body: bytes) -> None:
        self.size += len(body)
        if self.size > MAX_ANSWER:
            raise HttpClientError("the answer is too large")
        self.body.append(body)

    def on_message_complete(self) -> None:
        self.done = True


async def request(
    method: str,
    url: str,
    *,
    headers: dict[str, str] | None = None,
    body: bytes = b"",
    params: dict[str, str] | None = None,
    ssl_context: ssl.SSLContext | None = None,
    within: float = 10.0,
) -> HttpAnswer:
    """Make one call; raise `HttpClientError` (or `TimeoutError`) when no whole answer came."""
    parts = urlsplit(url)
    secure = parts.scheme == "https"
    host = parts.hostname or "localhost"
    port = parts.port or (443 if secure else 80)
    target = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
    if params:
        target += ("&" if "?" in target else "?") + urlencode(params)
    context = (ssl_context or ssl.create_default_context()) if secure else None
    lines = [f"{method} {target} HTTP/1.1", f"Host: {parts.netloc}", "Connection: close"]
    lines += [f"{name}: {value}" for name, value in (headers or {}).items()]
    if body or method in ("POST", "PUT"):
        lines.append(f"Content-Length: {len(body)}")
    head = ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")
    async with asyncio.timeout(within):
        try:
            reader, writer = await asyncio.open_connection(
                host, port, ssl=context, server_hostname=host if secure else None
            )
        except (OSError, ssl.SSLError) as exc:
            raise HttpClientError(f"cannot connect to {parts.netloc}: {exc}") from exc
        try:
            writer.write(head + body)
            answer = _Reader()
            while not answer.done:
                data = await reader.read(65536)
                if not data:
                    break
                try:
                    answer.parser.feed_data(data)
                except httptools.HttpParserError as exc:
                    raise HttpClientError(f"invalid answer from {parts.netloc}: {exc}") from exc
            if not answer.done:
                raise HttpClientError(f"{parts.netloc} closed the connection before answering in full")
            return HttpAnswer(answer.parser.get_status_code(), b"".join(answer.body))
        except (OSError, ssl.SSLError) as exc:
            if isinstance(exc, HttpClientError):
                raise
            raise HttpClientError(f"{parts.netloc}: {exc}") from exc
        finally:
            writer.close()
