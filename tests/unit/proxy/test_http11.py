"""HTTP/1.1 as a forwarder must speak it, on both paths: raw sockets against a sidecar and real upstreams."""

from __future__ import annotations

import asyncio
import logging

import pytest

from breakwater.proxy import Sidecar
from breakwater.proxy.fast import server as fast_server
from breakwater.proxy.full import server as full_server
from breakwater.proxy.logs import RateLimitedLog
from tests.unit.proxy.helpers import FaultyUpstream, SidecarFactory, connect, sidecar_doc, upstream_doc

pytestmark = pytest.mark.timeout(60)


async def _sidecar(start_sidecar: SidecarFactory, port: int, **overrides: object) -> Sidecar:
    return await start_sidecar(sidecar_doc(upstream_doc("up", port, **overrides)))


async def _raw_upstream(answer: bytes, *, serve: int = 1) -> tuple[asyncio.Server, int, list[bytes]]:
    """An upstream that answers `answer` to the first `serve` requests of each connection, then closes
    the connection when the next request arrives, unanswered (what an upstream closing an idle
    keep-alive connection looks like when the request crosses the close)."""
    heads: list[bytes] = []

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            for _ in range(serve):
                heads.append(await reader.readuntil(b"\r\n\r\n"))
                writer.write(answer)
                await writer.drain()
            await reader.readuntil(b"\r\n\r\n")
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            writer.close()

    server = await asyncio.start_server(handle, "127.0.0.1", 0)
    return server, server.sockets[0].getsockname()[1], heads


async def test_pipelined_requests_are_answered_in_order(
    start_sidecar: SidecarFactory, upstream: FaultyUpstream
) -> None:
    sidecar = await _sidecar(start_sidecar, upstream.port)
    async with connect(sidecar.listen_port("up")) as conn:
        await conn.send(b"".join(b"GET /cache/r%d HTTP/1.1\r\nHost: x\r\n\r\n" % i for i in range(5)))
        bodies = [(await conn.response())[2] for _ in range(5)]
    assert bodies == [b"r%d#1" % i for i in range(5)]


async def test_head_204_and_304_answers_carry_no_body_and_keep_the_connection(
    start_sidecar: SidecarFactory, upstream: FaultyUpstream
) -> None:
    sidecar = await _sidecar(start_sidecar, upstream.port)
    async with connect(sidecar.listen_port("up")) as conn:
        await conn.send(b"HEAD /big/1 HTTP/1.1\r\nHost: x\r\n\r\n")
        status, headers, _ = await conn.response(head_only=True)
        assert (status, headers["content-length"]) == (200, str(1024 * 1024))
        for code in (204, 304):
            await conn.send(b"GET /status/%d HTTP/1.1\r\nHost: x\r\n\r\n" % code)
            status, headers, _ = await conn.response()
            assert status == code
            assert "transfer-encoding" not in headers
        await conn.send(b"GET /ok HTTP/1.1\r\nHost: x\r\n\r\n")
        status, _, body = await conn.response()
        assert (status, body) == (200, b"ok")


async def test_connection_close_from_the_client_is_honoured(
    start_sidecar: SidecarFactory, upstream: FaultyUpstream
) -> None:
    sidecar = await _sidecar(start_sidecar, upstream.port)
    async with connect(sidecar.listen_port("up")) as conn:
        await conn.send(b"GET /ok HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        status, headers, body = await conn.response()
        assert (status, body, headers.get("connection")) == (200, b"ok", "close")
        assert await conn.closed()
    assert "Connection" not in upstream.last_headers or upstream.last_headers["Connection"] != "close"


async def test_connection_close_from_the_upstream_keeps_the_clients_connection(
    start_sidecar: SidecarFactory,
) -> None:
    answer = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nConnection: close\r\n\r\nhi"
    server, port, heads = await _raw_upstream(answer)
    try:
        sidecar = await _sidecar(start_sidecar, port)
        async with connect(sidecar.listen_port("up")) as conn:
            for _ in range(3):
                await conn.send(b"GET /x HTTP/1.1\r\nHost: x\r\n\r\n")
                status, headers, body = await conn.response()
                assert (status, body) == (200, b"hi")
                assert headers.get("connection") != "close"
        assert len(heads) == 3
    finally:
        server.close()


async def test_chunked_request_bodies_reach_the_upstream_whole(
    start_sidecar: SidecarFactory, upstream: FaultyUpstream
) -> None:
    sidecar = await _sidecar(start_sidecar, upstream.port)
    async with connect(sidecar.listen_port("up")) as conn:
        await conn.send(
            b"POST /echo HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n"
            b"5;ext=1\r\nhello\r\n6\r\n world\r\n0\r\n\r\n"
        )
        status, _, body = await conn.response()
    assert (status, body) == (200, b"hello world")


async def test_request_bodies_sent_with_their_head_or_after_it_reach_the_upstream_whole_in_order(
    start_sidecar: SidecarFactory, upstream: FaultyUpstream
) -> None:
    # (The fast path holds a request's head until the client's read is parsed, to write it with
    # the body that came along: every way a body can arrive must still get there, on one connection.)
    sidecar = await _sidecar(start_sidecar, upstream.port)
    async with connect(sidecar.listen_port("up")) as conn:
        await conn.send(b"POST /echo HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\n\r\nhello")
        assert (await conn.response())[::2] == (200, b"hello")
        await conn.send(b"POST /echo HTTP/1.1\r\nHost: x\r\nContent-Length: 11\r\n\r\nhello")
        await asyncio.sleep(0.05)
        await conn.send(b" world")
        assert (await conn.response())[::2] == (200, b"hello world")
        await conn.send(b"PUT /echo HTTP/1.1\r\nHost: x\r\nContent-Length: 3\r\n\r\n")
        await asyncio.sleep(0.05)
        await conn.send(b"abc")
        assert (await conn.response())[::2] == (200, b"abc")
        await conn.send(
            b"POST /echo HTTP/1.1\r\nHost: x\r\nContent-Length: 2\r\n\r\nhi"
            b"POST /echo HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nyou\r\n0\r\n\r\n"
            b"GET /ok HTTP/1.1\r\nHost: x\r\n\r\n"
        )
        assert [(await conn.response())[::2] for _ in range(3)] == [(200, b"hi"), (200, b"you"), (200, b"ok")]


async def test_a_pipelined_chunked_body_cannot_smuggle_a_request_to_the_upstream(
    start_sidecar: SidecarFactory, upstream: FaultyUpstream
) -> None:
    # A request that waits its turn keeps what arrived of its body: framed as it will be sent, or
    # its content, de-chunked, would be read by the upstream as chunk framing and a request of its own.
    sidecar = await _sidecar(start_sidecar, upstream.port)
    inner = b"0\r\n\r\nGET /smuggled HTTP/1.1\r\nHost: x\r\n\r\n"
    async with connect(sidecar.listen_port("up")) as conn:
        await conn.send(
            b"GET /ok HTTP/1.1\r\nHost: x\r\n\r\n"
            b"POST /echo HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n"
            b"%x\r\n%b\r\n0\r\n\r\n" % (len(inner), inner)
        )
        assert (await conn.response())[::2] == (200, b"ok")
        assert (await conn.response())[::2] == (200, inner)
        await conn.send(b"GET /ok HTTP/1.1\r\nHost: x\r\n\r\n")
        assert (await conn.response())[::2] == (200, b"ok")
    assert upstream.hits["/smuggled"] == 0


SMUGGLING = {
    "content-length and transfer-encoding": (
        b"POST /consume HTTP/1.1\r\nHost: x\r\nContent-Length: 4\r\nTransfer-Encoding: chunked\r\n\r\n"
        b"0\r\n\r\nGET /ok HTTP/1.1\r\nHost: x\r\n\r\n"
    ),
    "two content-lengths": (
        b"POST /consume HTTP/1.1\r\nHost: x\r\nContent-Length: 3\r\nContent-Length: 40\r\n\r\nabc"
    ),
    "obs-fold": b"GET /ok HTTP/1.1\r\nHost: x\r\nX-Folded: a\r\n b\r\n\r\n",
    "bare LF": b"GET /ok HTTP/1.1\nHost: x\n\n",
    "space before the colon": b"GET /ok HTTP/1.1\r\nHost: x\r\nContent-Length : 5\r\n\r\nhello",
}


@pytest.mark.parametrize("shape", sorted(SMUGGLING))
async def test_request_smuggling_shapes_get_400_and_never_reach_the_upstream(
    start_sidecar: SidecarFactory, upstream: FaultyUpstream, shape: str
) -> None:
    sidecar = await _sidecar(start_sidecar, upstream.port)
    async with connect(sidecar.listen_port("up")) as conn:
        await conn.send(SMUGGLING[shape])
        status, _, _ = await conn.response()
        assert status == 400
        assert await conn.closed()
    assert upstream.hits.total() == 0


async def test_an_invalid_chunk_size_gets_400_and_the_upstream_never_gets_a_complete_request(
    start_sidecar: SidecarFactory, upstream: FaultyUpstream
) -> None:
    sidecar = await _sidecar(start_sidecar, upstream.port)
    async with connect(sidecar.listen_port("up")) as conn:
        await conn.send(
            b"POST /consume HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\nabc\r\n0\r\n\r\n"
        )
        status, _, _ = await conn.response()
        assert status == 400
        assert await conn.closed()
    await asyncio.sleep(0.1)
    assert sidecar.upstream("up").stats.successes == 0


async def test_an_idle_pooled_connection_the_upstream_closed_is_retried_once_for_idempotent_requests(
    start_sidecar: SidecarFactory,
) -> None:
    server, port, heads = await _raw_upstream(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
    try:
        sidecar = await _sidecar(start_sidecar, port, retry={"attempts": 1})
        async with connect(sidecar.listen_port("up")) as conn:
            await conn.send(b"GET /first HTTP/1.1\r\nHost: x\r\n\r\n")
            assert (await conn.response())[0] == 200
            await conn.send(b"GET /second HTTP/1.1\r\nHost: x\r\n\r\n")  # meets the closing connection
            assert (await conn.response())[0] == 200
            await conn.send(b"POST /third HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\n\r\n")
            status, headers, _ = await conn.response()
        assert (status, headers["x-breakwater"]) == (502, "reset")
        assert [h.split(b" ")[1] for h in heads] == [b"/first", b"/second"]
        snap = sidecar.upstream("up").breaker.snapshot()
        assert snap.failures == 1  # the POST's; the retried GET was not held against the upstream
    finally:
        server.close()


async def test_an_unsolicited_101_from_the_upstream_is_a_502_and_a_failure(
    start_sidecar: SidecarFactory,
) -> None:
    answer = b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: upgrade\r\n\r\n"
    server, port, _ = await _raw_upstream(answer)
    try:
        sidecar = await _sidecar(start_sidecar, port)
        async with connect(sidecar.listen_port("up")) as conn:
            await conn.send(b"GET /x HTTP/1.1\r\nHost: x\r\n\r\n")
            status, headers, _ = await conn.response()
        assert (status, headers["x-breakwater"]) == (502, "reset")
        assert sidecar.upstream("up").stats.failures == 1
        assert sidecar.upstream("up").stats.successes == 0
    finally:
        server.close()


async def test_options_star_is_answered_by_the_sidecar(
    start_sidecar: SidecarFactory, upstream: FaultyUpstream, caplog: pytest.LogCaptureFixture
) -> None:
    sidecar = await _sidecar(start_sidecar, upstream.port)
    async with connect(sidecar.listen_port("up")) as conn:
        await conn.send(b"OPTIONS * HTTP/1.1\r\nHost: x\r\n\r\n")
        status, headers, _ = await conn.response()
        assert status == 200
        assert "GET" in headers["allow"]
        await conn.send(b"GET /ok HTTP/1.1\r\nHost: x\r\n\r\n")
        assert (await conn.response())[2] == b"ok"
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR]


async def test_malformed_requests_log_one_warning_per_kind_and_no_traceback(
    start_sidecar: SidecarFactory,
    upstream: FaultyUpstream,
    caplog: pytest.LogCaptureFixture,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # The limiter is per process (one sidecar per pod): another test of this process that logged the
    # same kinds less than 10 s ago would leave this one nothing to log. Fresh limiters for this one.
    for server in (full_server, fast_server):
        monkeypatch.setattr(server, "bad_requests_log", RateLimitedLog(server.log))
    sidecar = await _sidecar(start_sidecar, upstream.port)
    caplog.set_level(logging.DEBUG, logger="breakwater")
    caplog.set_level(logging.INFO, logger="aiohttp")
    for i in range(200):
        async with connect(sidecar.listen_port("up")) as conn:
            await conn.send(SMUGGLING["obs-fold"] if i % 2 else b"NOT HTTP AT ALL\r\n\r\n")
            assert (await conn.response())[0] == 400
    mine = [r for r in caplog.records if r.name.startswith(("breakwater", "aiohttp"))]
    assert not [r for r in mine if r.levelno >= logging.ERROR or r.exc_info]
    warnings = [r for r in mine if r.levelno == logging.WARNING]
    assert 1 <= len(warnings) <= 4, [r.getMessage() for r in warnings]


async def test_an_upgrade_request_is_handed_to_the_full_path_and_answered(
    start_sidecar: SidecarFactory, upstream: FaultyUpstream
) -> None:
    sidecar = await _sidecar(start_sidecar, upstream.port)
    async with connect(sidecar.listen_port("up")) as conn:
        await conn.send(b"GET /headers HTTP/1.1\r\nHost: x\r\nConnection: upgrade\r\nUpgrade: h2c\r\n\r\n")
        status, _, _ = await conn.response()
        assert status == 200
        await conn.send(b"GET /ok HTTP/1.1\r\nHost: x\r\n\r\n")
        assert (await conn.response())[2] == b"ok"
    assert "Upgrade" not in upstream.last_headers
    assert sidecar.upstream("up").stats.full_path == 2
