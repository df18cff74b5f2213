"""Misbehaving clients, draining on shutdown, and no leaks after 10,000 faulty requests."""

from __future__ import annotations

import asyncio
import contextlib
import gc
import json
import sys
from typing import Any

import aiohttp
import pytest

from breakwater.proxy import Sidecar
from breakwater.proxy.fast.server import MAX_FIELDS, MAX_HEAD_BYTES
from breakwater.proxy.sidecar import run_sidecar
from tests.unit.proxy.helpers import (
    FaultyUpstream,
    SidecarFactory,
    eventually,
    free_port,
    open_fds,
    rss_bytes,
    sidecar_doc,
    start_raw_server,
    upstream_doc,
)

pytestmark = pytest.mark.timeout(120)


async def _raw(port: int, data: bytes, *, wait: float = 5.0) -> bytes:
    """Send raw bytes, return everything the proxy answers until it closes (bounded by `wait`)."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(data)
        await writer.drain()
        return await asyncio.wait_for(reader.read(), wait)
    finally:
        writer.close()


async def test_a_malformed_request_line_gets_400_and_the_connection_closed(
    start_sidecar: SidecarFactory, upstream: FaultyUpstream
) -> None:
    sidecar = await start_sidecar(sidecar_doc(upstream_doc("up", upstream.port)))
    answer = await _raw(sidecar.listen_port("up"), b"THIS IS NOT HTTP\r\n\r\n")
    assert answer.startswith((b"HTTP/1.1 400", b"HTTP/1.0 400"))
    assert upstream.hits.total() == 0


async def test_oversized_heads_get_431_or_414_without_reaching_the_upstream(
    start_sidecar: SidecarFactory, upstream: FaultyUpstream
) -> None:
    sidecar = await start_sidecar(sidecar_doc(upstream_doc("up", upstream.port)))
    port = sidecar.listen_port("up")
    huge_value = await _raw(port, b"GET /ok HTTP/1.1\r\nHost: x\r\nX-Big: " + b"a" * 100_000 + b"\r\n\r\n")
    assert huge_value[9:12] == b"431", huge_value[:40]
    many = b"".join(b"X-H%d: v\r\n" % i for i in range(500))
    too_many = await _raw(port, b"GET /ok HTTP/1.1\r\nHost: x\r\n" + many + b"\r\n")
    assert too_many[9:12] == b"431", too_many[:40]
    long_line = await _raw(port, b"GET /" + b"p" * 100_000 + b" HTTP/1.1\r\nHost: x\r\n\r\n")
    assert long_line[9:12] == b"414", long_line[:40]
    assert upstream.hits.total() == 0


@pytest.mark.parametrize("start_sidecar", ["fast"], indirect=True)  # the full path's limits are aiohttp's
async def test_the_fast_paths_head_limits_are_exact_a_nominating_connection_field_counted_once(
    start_sidecar: SidecarFactory, upstream: FaultyUpstream
) -> None:
    sidecar = await start_sidecar(sidecar_doc(upstream_doc("up", upstream.port)))
    port = sidecar.listen_port("up")

    def get(*fields: bytes) -> bytes:  # each field counts len(name) + len(value) + 4
        lines = (b"Host: x", b"Connection: close", *fields)  # 9 + 19 bytes, 2 fields
        return b"GET /ok HTTP/1.1\r\n" + b"".join(line + b"\r\n" for line in lines) + b"\r\n"

    def filler(n: int) -> list[bytes]:
        return [b"X-F%03d: v" % i for i in range(n)]

    assert (await _raw(port, get(*filler(MAX_FIELDS - 2))))[9:12] == b"200"
    assert (await _raw(port, get(*filler(MAX_FIELDS - 1))))[9:12] == b"431"
    hop = (b"Connection: X-Drop", b"X-Drop: 1")  # 20 + 11 bytes, 2 fields

    def big(extra: int) -> list[bytes]:  # three fields (the upstream takes up to 8 KiB each) filling the rest
        room = MAX_HEAD_BYTES - 9 - 19 - 20 - 11 - 3 * 8 + extra
        return [b"X-B%d: " % i + b"b" * (room // 3 + (i < room % 3)) for i in range(3)]

    assert (await _raw(port, get(*hop, *big(0))))[9:12] == b"200"
    assert (await _raw(port, get(*hop, *big(1))))[9:12] == b"431"
    assert upstream.hits["/ok"] == 2
    assert "X-Drop" not in upstream.last_headers


async def test_a_slow_loris_client_is_disconnected_after_the_idle_timeout(
    start_sidecar: SidecarFactory, upstream: FaultyUpstream
) -> None:
    sidecar = await start_sidecar(sidecar_doc(upstream_doc("up", upstream.port)), idle_timeout=0.5)
    loop = asyncio.get_running_loop()
    reader, writer = await asyncio.open_connection("127.0.0.1", sidecar.listen_port("up"))
    start = loop.time()
    closed_at = None
    try:
        writer.write(b"GET /ok HTTP/1.1\r\nHost: x\r\n")
        for i in range(50):  # one header line every 0.1 s, never finishing the head
            try:
                writer.write(b"X-Drip-%d: 1\r\n" % i)
                await writer.drain()
                data = await asyncio.wait_for(reader.read(100), 0.1)
            except TimeoutError:
                continue
            except ConnectionError:
                data = b""
            if data == b"":
                closed_at = loop.time() - start
                break
    finally:
        writer.close()
    assert closed_at is not None, "the connection was never closed"
    assert closed_at < 2.0
    assert upstream.hits.total() == 0


async def test_an_idle_connection_that_never_sends_a_request_is_closed(
    start_sidecar: SidecarFactory, upstream: FaultyUpstream
) -> None:
    sidecar = await start_sidecar(sidecar_doc(upstream_doc("up", upstream.port)), idle_timeout=0.3)
    reader, writer = await asyncio.open_connection("127.0.0.1", sidecar.listen_port("up"))
    try:
        assert await asyncio.wait_for(reader.read(), 3) == b""
    finally:
        writer.close()


async def test_a_client_that_stalls_its_upload_gets_408_and_the_upstream_is_not_blamed(
    start_sidecar: SidecarFactory, upstream: FaultyUpstream
) -> None:
    sidecar = await start_sidecar(
        sidecar_doc(upstream_doc("up", upstream.port, timeoutSeconds=0.3, breaker={"consecutiveFailures": 1}))
    )
    answer = await _raw(
        sidecar.listen_port("up"),
        b"POST /consume HTTP/1.1\r\nHost: x\r\nContent-Length: 100000\r\n\r\n" + b"z" * 10,
        wait=5,
    )
    assert answer.startswith(b"HTTP/1.1 408")
    up = sidecar.upstream("up")
    assert up.stats.client_errors == 1
    snap = up.breaker.snapshot()
    assert snap.failures == 0
    assert snap.state.value == "Closed"


async def test_a_small_upload_that_never_completes_is_cut_at_the_deadline_and_not_blamed_on_the_upstream(
    start_sidecar: SidecarFactory, upstream: FaultyUpstream
) -> None:
    sidecar = await start_sidecar(sidecar_doc(upstream_doc("up", upstream.port, timeoutSeconds=0.3)))
    loop = asyncio.get_running_loop()
    reader, writer = await asyncio.open_connection("127.0.0.1", sidecar.listen_port("up"))
    try:
        start = loop.time()
        writer.write(b"POST /consume HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n\r\nonly-part")
        answer = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)
        assert loop.time() - start < 1.5
    finally:
        writer.close()
    assert answer.startswith(b"HTTP/1.1 408")
    up = sidecar.upstream("up")
    assert up.stats.client_errors == 1
    assert up.breaker.snapshot().failures == 0


async def test_shutdown_stops_accepting_and_lets_requests_in_flight_finish(
    upstream: FaultyUpstream, tmp_path: Any
) -> None:
    from breakwater.api.plain.parse import parse_sidecar_config

    config = parse_sidecar_config(sidecar_doc(upstream_doc("up", upstream.port, timeoutSeconds=5)))
    sidecar = Sidecar(config=config, drain_seconds=3.0)
    await sidecar.start()
    url = f"http://127.0.0.1:{sidecar.listen_port('up')}"
    async with aiohttp.ClientSession() as client:

        async def slow() -> tuple[int, bytes]:
            async with client.get(f"{url}/slow/0.5") as resp:
                return resp.status, await resp.read()

        in_flight = asyncio.create_task(slow())
        await eventually(lambda: sidecar.upstream("up").stats.in_flight == 1)
        loop = asyncio.get_running_loop()
        start = loop.time()
        stopping = asyncio.create_task(sidecar.stop())
        await asyncio.sleep(0.1)
        async with aiohttp.ClientSession() as fresh:
            with pytest.raises(aiohttp.ClientConnectionError):
                async with fresh.get(f"{url}/ok") as resp:
                    await resp.read()
        assert await in_flight == (200, b"slow ok")
        await stopping
        assert loop.time() - start < 2.0


async def test_shutdown_cuts_requests_that_outlive_the_drain_deadline(upstream: FaultyUpstream) -> None:
    from breakwater.api.plain.parse import parse_sidecar_config

    config = parse_sidecar_config(sidecar_doc(upstream_doc("up", upstream.port, timeoutSeconds=30)))
    sidecar = Sidecar(config=config, drain_seconds=0.5)
    await sidecar.start()
    url = f"http://127.0.0.1:{sidecar.listen_port('up')}"
    async with aiohttp.ClientSession() as client:

        async def hang() -> None:
            async with client.get(f"{url}/hang") as resp:
                await resp.read()

        in_flight = asyncio.create_task(hang())
        await eventually(lambda: sidecar.upstream("up").stats.in_flight == 1)
        loop = asyncio.get_running_loop()
        start = loop.time()
        await sidecar.stop()
        assert loop.time() - start < 3.0
        with pytest.raises(aiohttp.ClientError):
            await in_flight
    snap = sidecar.upstream("up").breaker.snapshot()
    assert snap.failures == 0  # a request we cut ourselves says nothing about the upstream
    assert snap.ignored == 1


@pytest.mark.slow
async def test_after_10000_faulty_requests_fds_connections_and_memory_are_back_to_baseline(
    upstream: FaultyUpstream, tmp_path: Any
) -> None:
    garbage, garbage_port = await start_raw_server(b"HTTP/1.1 ??? broken\r\n\r\n")
    observe = {"mode": "Observe", "breaker": {"consecutiveFailures": 3, "openSeconds": 0.05}}
    doc = sidecar_doc(
        upstream_doc("five", upstream.port, **observe),
        upstream_doc("refused", free_port(), breaker={"consecutiveFailures": 3, "openSeconds": 0.05}),
        upstream_doc("reset", upstream.port, **observe),
        upstream_doc("midbody", upstream.port, **observe),
        upstream_doc("malformed", garbage_port, **observe),
        upstream_doc("timeout", upstream.port, timeoutSeconds=0.05, **observe),
    )
    paths = {
        "five": "/status/503",
        "refused": "/x",
        "reset": "/reset-small",
        "midbody": "/reset",
        "malformed": "/x",
        "timeout": "/hang",
    }
    path = tmp_path / "leak.json"
    path.write_text(json.dumps(doc))
    try:
        async with run_sidecar(path, pool_keepalive=0.3, drain_seconds=1.0) as sidecar:
            urls = [f"http://127.0.0.1:{sidecar.listen_port(name)}{p}" for name, p in paths.items()]
            gate = asyncio.Semaphore(50)
            outcomes: dict[str, int] = {}

            async def one(client: aiohttp.ClientSession, url: str) -> None:
                async with gate:
                    try:
                        async with client.get(url) as resp:
                            await resp.read()
                            key = f"{resp.status} {resp.headers.get('x-breakwater')}"
                    except aiohttp.ClientError as exc:
                        key = type(exc).__name__
                    outcomes[key] = outcomes.get(key, 0) + 1

            async def run(total: int) -> None:
                timeout = aiohttp.ClientTimeout(total=10)
                async with aiohttp.ClientSession(trust_env=False, timeout=timeout) as client:
                    await asyncio.gather(*(one(client, urls[i % len(urls)]) for i in range(total)))

            async def settled() -> None:
                upstream.release.set()  # let the upstream's own hung handlers go
                await eventually(lambda: sidecar.client_connections() == 0, within=10)
                await asyncio.sleep(0.6)  # > pool_keepalive: idle upstream connections expire
                upstream.release.clear()
                gc.collect()

            await run(2_000)  # warm-up: caches, pools, allocator arenas
            await settled()
            fds_before = open_fds()
            rss_before = rss_bytes()
            outcomes.clear()
            blocks_before = sys.getallocatedblocks()

            await run(10_000)
            assert sum(outcomes.values()) == 10_000
            # every request got an answer of an expected kind, none hung
            expected = {
                "503 None",
                "503 open",
                "502 connect-error",
                "502 reset",
                "504 timeout",
                "ClientPayloadError",
            }
            assert set(outcomes) <= expected, outcomes
            for up in sidecar.routes.by_name.values():
                assert up.stats.in_flight == 0
            await settled()
            await eventually(lambda: open_fds() <= fds_before, within=10)
            assert sidecar.client_connections() == 0
            # Python objects: back to baseline (a leak of one object per request would show as 10,000s)
            blocks_grown = sys.getallocatedblocks() - blocks_before
            assert blocks_grown < 5_000, f"{blocks_grown} more allocated blocks"
            # RSS: the C allocator keeps freed arenas, so only a loose bound is meaningful here
            grown = rss_bytes() - rss_before
            assert grown < 48 * 1024 * 1024, f"RSS grew by {grown / 2**20:.1f} MiB"
    finally:
        garbage.close()
        with contextlib.suppress(Exception):
            await garbage.wait_closed()


async def test_closed_client_connections_are_freed_at_once_not_left_to_the_cyclic_gc(
    upstream: FaultyUpstream, tmp_path: Any
) -> None:
    """A connection's parser and exchange refer back to it; a cycle left to the GC keeps the memory
    of every connection closed since its last full pass, and the pod's RSS grows with churn."""
    from breakwater.proxy.fast.exchange import Exchange
    from breakwater.proxy.fast.server import ClientConnection

    path = tmp_path / "churn.json"
    path.write_text(json.dumps(sidecar_doc(upstream_doc("up", upstream.port))))
    async with run_sidecar(path) as sidecar:
        port = sidecar.listen_port("up")
        gc.collect()
        gc.disable()
        try:
            for _ in range(50):
                reader, writer = await asyncio.open_connection("127.0.0.1", port)
                writer.write(b"GET /ok HTTP/1.1\r\nHost: up\r\n\r\n")
                await reader.readuntil(b"\r\n\r\n")
                writer.close()
                await writer.wait_closed()
            await eventually(lambda: sidecar.client_connections() == 0, within=10)
            left = [o for o in gc.get_objects() if isinstance(o, ClientConnection | Exchange)]
        finally:
            gc.enable()
    assert left == [], f"{len(left)} connection objects wait for the cyclic GC"
