"""A misbehaving or unusual upstream, on both paths: raw upstream sockets answering what a proxy must
not pass on as it came (RFC 9112 sections 5, 6.3; RFC 9110 section 15), and a raw client reading what
reaches it. Everything on 127.0.0.1."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Sequence

import pytest

from breakwater.proxy import Sidecar
from tests.unit.proxy.helpers import SidecarFactory, connect, sidecar_doc, upstream_doc

pytestmark = pytest.mark.timeout(60)

OK = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"


class RawUpstream:
    """Answers the first request it gets with `first` (written as its pieces, `gap` seconds apart), and
    every later one, on any connection, with `OK`; counts connections."""

    def __init__(self, first: bytes | Sequence[bytes], *, gap: float = 0.0) -> None:
        self.first = [first] if isinstance(first, bytes) else list(first)
        self.gap = gap
        self.connections = 0
        self.answered_first = False
        self.server: asyncio.Server | None = None
        self.port = 0

    async def start(self) -> None:
        self.server = await asyncio.start_server(self._handle, "127.0.0.1", 0)
        self.port = self.server.sockets[0].getsockname()[1]

    def close(self) -> None:
        if self.server is not None:
            self.server.close()

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        try:
            if not self.answered_first:
                self.answered_first = True
                await reader.readuntil(b"\r\n\r\n")
                for piece in self.first:
                    writer.write(piece)
                    await writer.drain()
                    if self.gap:
                        await asyncio.sleep(self.gap)
            while True:
                await reader.readuntil(b"\r\n\r\n")
                writer.write(OK)
                await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            writer.close()


async def _serve(
    start_sidecar: SidecarFactory, first: bytes | Sequence[bytes], *, gap: float = 0.0
) -> tuple[Sidecar, RawUpstream]:
    up = RawUpstream(first, gap=gap)
    await up.start()
    sidecar = await start_sidecar(sidecar_doc(upstream_doc("up", up.port)))
    return sidecar, up


async def _nothing_more(conn_reader: asyncio.StreamReader) -> bool:
    try:
        extra = await asyncio.wait_for(conn_reader.read(1), 0.3)
    except TimeoutError:
        return True
    return extra == b""  # (closed is fine too: nothing was passed on)


@pytest.mark.parametrize("coding", [b"gzip", b"chunked, gzip"])
async def test_a_transfer_coding_that_does_not_end_in_chunked_is_read_until_the_upstream_closes(
    start_sidecar: SidecarFactory, coding: bytes
) -> None:
    # RFC 9112 section 6.3, item 4: in a response, such a body is delimited by the connection's close.
    answer = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: %b\r\n\r\nhello, until close" % coding
    server = await asyncio.start_server(_closing_after(answer), "127.0.0.1", 0)
    try:
        sidecar = await start_sidecar(sidecar_doc(upstream_doc("up", server.sockets[0].getsockname()[1])))
        async with connect(sidecar.listen_port("up")) as conn:
            await conn.send(b"GET /x HTTP/1.1\r\nHost: x\r\n\r\n")
            status, headers, body = await conn.response()
        assert (status, body) == (200, b"hello, until close")
        assert headers["transfer-encoding"] == "chunked"  # re-framed for the client
        assert sidecar.upstream("up").stats.successes == 1
    finally:
        server.close()


def _closing_after(answer: bytes) -> Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]:
    """An upstream that answers `answer` to a connection's first request, then closes it."""

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            await reader.readuntil(b"\r\n\r\n")
            writer.write(answer)
            await writer.drain()
        finally:
            writer.close()

    return handle


async def test_whitespace_between_a_field_name_and_its_colon_is_a_502(start_sidecar: SidecarFactory) -> None:
    # RFC 9112 section 5.1: a proxy must not pass such a field on as it came.
    sidecar, up = await _serve(start_sidecar, b"HTTP/1.1 200 OK\r\nContent-Length : 2\r\n\r\nhi")
    try:
        async with connect(sidecar.listen_port("up")) as conn:
            await conn.send(b"GET /x HTTP/1.1\r\nHost: x\r\n\r\n")
            status, headers, _ = await conn.response()
            assert (status, headers["x-breakwater"]) == (502, "reset")
            assert "content-length " not in headers
        assert sidecar.upstream("up").stats.failures == 1
    finally:
        up.close()
