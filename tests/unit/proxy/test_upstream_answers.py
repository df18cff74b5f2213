"""A misbehaving or unusual upstream, on both paths: raw upstream sockets answering what a proxy must
not pass on as it came (RFC 9112 sections 5, 6.3; RFC 9110 section 15), and a raw client reading what
reaches it. Everything on 127.0.0.1."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence

import pytest

from breakwater.proxy import Sidecar
from tests.unit.proxy.helpers import OK, RawUpstream, SidecarFactory, connect, sidecar_doc, upstream_doc

pytestmark = pytest.mark.timeout(60)


@contextlib.asynccontextmanager
async def _serve(
    start_sidecar: SidecarFactory, first: bytes | Sequence[bytes], *, gap: float = 0.0
) -> AsyncIterator[tuple[Sidecar, RawUpstream]]:
    """A sidecar in front of a `RawUpstream` answering `first`; the upstream is closed afterwards."""
    up = RawUpstream(first, gap=gap)
    await up.start()
    try:
        yield await start_sidecar(sidecar_doc(upstream_doc("up", up.port))), up
    finally:
        up.close()


async def _a_get_is_a_failed_502(sidecar: Sidecar) -> dict[str, str]:
    """A GET gets the sidecar's own 502 (`x-breakwater: reset`), counted as one failure; its headers."""
    async with connect(sidecar.listen_port("up")) as conn:
        await conn.send(b"GET /x HTTP/1.1\r\nHost: x\r\n\r\n")
        status, headers, _ = await conn.response()
        assert (status, headers["x-breakwater"]) == (502, "reset")
        assert await _nothing_more(conn.reader)
    assert sidecar.upstream("up").stats.failures == 1
    return headers


async def _nothing_more(conn_reader: asyncio.StreamReader) -> bool:
    try:
        extra = await asyncio.wait_for(conn_reader.read(1), 0.3)
    except TimeoutError:
        return True
    return extra == b""  # (closed is fine too: nothing was passed on)


ANSWER_AND_MORE = {
    "a second answer": OK + b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\n\r\nbye",
    "bytes that are no answer": OK + b"XYZ",
    "a body on a 204": b"HTTP/1.1 204 No Content\r\nContent-Length: 5\r\n\r\nhello",
    "a second answer after Connection: close": (
        b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nConnection: close\r\n\r\nok"
        b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\n\r\nbye"
    ),
}


@pytest.mark.parametrize("shape", sorted(ANSWER_AND_MORE))
async def test_what_follows_a_complete_answer_is_never_relayed_and_the_connection_is_not_reused(
    start_sidecar: SidecarFactory, shape: str
) -> None:
    # RFC 9112 section 6.3: "A client MUST NOT process, cache, or forward such extra data as a
    # separate response". The answer before it may be passed on (the fast path does) or refused.
    async with _serve(start_sidecar, ANSWER_AND_MORE[shape]) as (sidecar, up):
        async with connect(sidecar.listen_port("up")) as conn:
            await conn.send(b"GET /x HTTP/1.1\r\nHost: x\r\n\r\n")
            status, _, body = await conn.response()
            assert status in (200, 204, 502)
            if start_sidecar.data_path == "fast":
                assert status != 502
            if status == 200:
                assert body == b"ok"
            assert await _nothing_more(conn.reader)
            await conn.send(b"GET /y HTTP/1.1\r\nHost: x\r\n\r\n")
            assert (await conn.response())[::2] == (200, b"ok")
        assert up.connections == 2  # the connection the extra bytes came on was not reused


async def test_a_status_below_100_is_a_502_and_nothing_of_it_reaches_the_client(
    start_sidecar: SidecarFactory,
) -> None:
    async with _serve(start_sidecar, b"HTTP/1.1 099 Weird\r\nContent-Length: 2\r\n\r\nhi") as (sidecar, _):
        await _a_get_is_a_failed_502(sidecar)


MALFORMED_WITH_THE_HEAD = {
    "an invalid chunk size": b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\nhello\r\n0\r\n\r\n",
    "an invalid second chunk size": (
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\nzz\r\n0\r\n\r\n"
    ),
    "a bare LF in the chunk framing": b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\nhello\n0\n\n",
    "an invalid trailer": (
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\nContent-Length: x\r\n\r\n"
    ),
}


@pytest.mark.parametrize("shape", sorted(MALFORMED_WITH_THE_HEAD))
async def test_an_answer_broken_in_the_read_that_brought_its_head_is_a_502_not_a_silent_close(
    start_sidecar: SidecarFactory, shape: str
) -> None:
    # Nothing of it was written to the client yet: the client can still be told what happened.
    async with _serve(start_sidecar, MALFORMED_WITH_THE_HEAD[shape]) as (sidecar, _):
        await _a_get_is_a_failed_502(sidecar)
        assert sidecar.upstream("up").breaker.snapshot().failures == 1


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


async def test_a_head_answer_followed_by_a_body_leaves_no_bytes_for_the_next_request(
    start_sidecar: SidecarFactory,
) -> None:
    # An upstream that sends a body to HEAD (it must not): the connection cannot carry another answer.
    # The rest of it comes later, when the next request could have been sent on that connection.
    head = b"HTTP/1.1 200 OK\r\nContent-Length: 300000\r\n\r\n"
    async with _serve(start_sidecar, [head + b"b" * 1000, b"b" * 299_000], gap=0.3) as (sidecar, _):
        async with connect(sidecar.listen_port("up")) as conn:
            await conn.send(b"HEAD /x HTTP/1.1\r\nHost: x\r\n\r\n")
            status, _, _ = await conn.response(head_only=True)
            assert status in (200, 502)
            if start_sidecar.data_path == "fast":
                assert status == 200
            await conn.send(b"GET /y HTTP/1.1\r\nHost: x\r\n\r\n")
            assert (await conn.response())[::2] == (200, b"ok")
        assert sidecar.upstream("up").stats.failures == (0 if status == 200 else 1)


async def test_a_head_answer_alone_keeps_its_connection(start_sidecar: SidecarFactory) -> None:
    async with _serve(start_sidecar, b"HTTP/1.1 200 OK\r\nContent-Length: 300000\r\n\r\n") as (sidecar, up):
        async with connect(sidecar.listen_port("up")) as conn:
            await conn.send(b"HEAD /x HTTP/1.1\r\nHost: x\r\n\r\n")
            status, headers, _ = await conn.response(head_only=True)
            assert (status, headers["content-length"]) == (200, "300000")
            await conn.send(b"GET /y HTTP/1.1\r\nHost: x\r\n\r\n")
            assert (await conn.response())[::2] == (200, b"ok")
        assert up.connections == 1


async def test_a_response_head_that_keeps_growing_is_a_502_without_a_traceback(
    start_sidecar: SidecarFactory, caplog: pytest.LogCaptureFixture
) -> None:
    # 2 MB of header fields in 64 KiB pieces: bounded (the fast path stops reading it at its limit).
    caplog.set_level(logging.DEBUG, logger="breakwater")
    field = b"X-Filler: " + b"f" * 100 + b"\r\n"
    pieces = [b"HTTP/1.1 200 OK\r\n"] + [field * 580] * 32 + [b"Content-Length: 2\r\n\r\nok"]
    async with _serve(start_sidecar, pieces, gap=0.01) as (sidecar, _):
        await _a_get_is_a_failed_502(sidecar)
        assert not [r for r in caplog.records if r.levelno >= logging.ERROR or r.exc_info]


async def test_whitespace_between_a_field_name_and_its_colon_is_a_502(start_sidecar: SidecarFactory) -> None:
    # RFC 9112 section 5.1: a proxy must not pass such a field on as it came.
    async with _serve(start_sidecar, b"HTTP/1.1 200 OK\r\nContent-Length : 2\r\n\r\nhi") as (sidecar, _):
        assert "content-length " not in await _a_get_is_a_failed_502(sidecar)
