"""The fast path knows a request's HTTP version without asking the parser when no Connection or
Proxy-Connection field came (llhttp then keeps the connection alive exactly for 1.1): the version it
notes must be the parser's own in every case."""

from __future__ import annotations

from types import SimpleNamespace

import httptools
import pytest

from breakwater.proxy.answers import Answer, plain
from breakwater.proxy.fast.request import RequestHead
from breakwater.proxy.fast.server import ClientConnection


class _Listener:
    """What a `ClientConnection` needs of its listener: every request answered by the proxy itself."""

    def __init__(self) -> None:
        self.engine = SimpleNamespace(pools=None, deadlines=None)
        self.connections: set[ClientConnection] = set()
        self.seen: list[RequestHead] = []

    def route(self, req: RequestHead) -> Answer:
        self.seen.append(req)
        return plain(200, "test", "ok\n")


class _ParsedVersion:
    def __init__(self) -> None:
        self.version = ""
        self.keep_alive = False
        self.parser = httptools.HttpRequestParser(self)

    def on_headers_complete(self) -> None:
        self.version = self.parser.get_http_version()
        self.keep_alive = self.parser.should_keep_alive()


@pytest.mark.parametrize("version", [b"0.9", b"1.0", b"1.1", b"2.0"])
@pytest.mark.parametrize(
    "fields",
    [
        b"",
        b"Connection: keep-alive\r\n",
        b"Connection: close\r\n",
        b"Proxy-Connection: keep-alive\r\n",
        b"proxy-connection: close\r\n",
        b"Connection: x-hop\r\nX-Hop: 1\r\n",
    ],
)
async def test_the_noted_version_and_keep_alive_are_the_parsers(version: bytes, fields: bytes) -> None:
    request = b"GET /v HTTP/" + version + b"\r\nHost: h\r\n" + fields + b"\r\n"
    expected = _ParsedVersion()
    expected.parser.feed_data(request)
    listener = _Listener()
    conn = ClientConnection(listener)  # type: ignore[arg-type]
    conn.data_received(request)
    (req,) = listener.seen
    assert (req.version, req.keep_alive) == (expected.version, expected.keep_alive)
    assert req.http11 == (expected.version == "1.1")
