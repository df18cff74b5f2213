"""The fast path knows a request's HTTP version without asking the parser when no Connection or
Proxy-Connection field came (llhttp then keeps the connection alive exactly for 1.1): what it does
with the version and keep-alive it notes must follow the parser's own verdicts in every case. Seen by
a raw client of a real sidecar in front of a raw upstream, on 127.0.0.1: a chunked answer stays
chunked only for HTTP/1.1, and the connection is kept only when the parser keeps it alive."""

from __future__ import annotations

import contextlib
from pathlib import Path

import httptools
import pytest

from tests.unit.proxy.helpers import OK, RawUpstream, SidecarFactory, connect, sidecar_doc, upstream_doc

pytestmark = pytest.mark.timeout(60)

CHUNKED = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nok\r\n0\r\n\r\n"


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
async def test_framing_and_keep_alive_follow_the_parsers_verdicts(
    version: bytes, fields: bytes, tmp_path: Path
) -> None:
    request = b"GET /v HTTP/" + version + b"\r\nHost: h\r\n" + fields + b"\r\n"
    expected = _ParsedVersion()
    expected.parser.feed_data(request)
    async with contextlib.AsyncExitStack() as stack:
        # A RawUpstream answers its first request with the answer given: the chunked one gets one.
        sized, chunked = RawUpstream(OK), RawUpstream(CHUNKED)
        for upstream in (sized, chunked):
            await upstream.start()
            stack.callback(upstream.close)
        start = SidecarFactory(tmp_path, stack, path="fast")
        doc = sidecar_doc(upstream_doc("sized", sized.port), upstream_doc("chunked", chunked.port))
        sidecar = await start(doc)

        async with connect(sidecar.listen_port("sized")) as conn:
            await conn.send(request)
            status, headers, body = await conn.response()
            assert (status, body) == (200, b"ok")
            assert (headers.get("connection") != "close") == expected.keep_alive, headers
            if expected.keep_alive:  # kept: a second request on it is answered
                await conn.send(request)
                assert (await conn.response())[0] == 200
            else:
                assert await conn.closed()

        async with connect(sidecar.listen_port("chunked")) as conn:
            await conn.send(request)
            status, headers, body = await conn.response()
            assert (status, body) == (200, b"ok")
            # Chunked framing only for an HTTP/1.1 client; any other reads the body until close.
            assert (headers.get("transfer-encoding") == "chunked") == (expected.version == "1.1"), headers
