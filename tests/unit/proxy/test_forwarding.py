"""The forwarding path on an upstream's own listener: what passes, what is rewritten, what streams."""

from __future__ import annotations

import asyncio
import hashlib

import aiohttp
import pytest

from tests.unit.proxy.helpers import FaultyUpstream, SidecarFactory, sidecar_doc, upstream_doc

pytestmark = pytest.mark.timeout(60)


async def _listener(start_sidecar: SidecarFactory, upstream: FaultyUpstream, **overrides: object) -> str:
    sidecar = await start_sidecar(sidecar_doc(upstream_doc("up", upstream.port, **overrides)))
    return f"http://127.0.0.1:{sidecar.listen_port('up')}"


async def test_a_request_reaches_the_upstream_with_its_host_rewritten_to_the_upstreams(
    start_sidecar: SidecarFactory, upstream: FaultyUpstream, client: aiohttp.ClientSession
) -> None:
    base = await _listener(start_sidecar, upstream)
    async with client.get(f"{base}/headers", headers={"X-Custom": "kept"}) as resp:
        assert resp.status == 200
        seen = await resp.json()
    assert seen["Host"] == f"127.0.0.1:{upstream.port}"
    assert seen["X-Custom"] == "kept"
    assert "User-Agent" in seen  # the client's own, not one added by the proxy
    assert seen["User-Agent"].startswith("Python/")


async def test_hop_by_hop_headers_are_dropped_in_both_directions(
    start_sidecar: SidecarFactory, upstream: FaultyUpstream, client: aiohttp.ClientSession
) -> None:
    base = await _listener(start_sidecar, upstream)
    request_headers = {
        "Connection": "keep-alive, X-Secret-Hop",
        "X-Secret-Hop": "no",
        "Keep-Alive": "timeout=5",
        "TE": "trailers",
        "Proxy-Authorization": "Basic Zm9vOmJhcg==",
        "Upgrade": "h2c",
        "X-End-To-End": "yes",
    }
    async with client.get(f"{base}/headers", headers=request_headers) as resp:
        seen = await resp.json()
        response_headers = resp.headers
    for name in ("X-Secret-Hop", "Keep-Alive", "TE", "Proxy-Authorization", "Upgrade"):
        assert name not in seen, name
    assert seen["X-End-To-End"] == "yes"
    assert "X-Hop" not in response_headers
    assert "Keep-Alive" not in response_headers
    assert response_headers["X-End-To-End"] == "passes"


async def test_paths_and_query_strings_pass_through_unchanged_byte_for_byte(
    start_sidecar: SidecarFactory, upstream: FaultyUpstream, client: aiohttp.ClientSession
) -> None:
    base = await _listener(start_sidecar, upstream)
    async with client.get(f"{base}/odd/%2Fslash%20space?q=a%26b&x=%E2%9C%93", allow_redirects=False) as resp:
        assert resp.status == 200
    assert upstream.hits["/odd//slash space"] == 1 or upstream.hits["/odd/%2Fslash space"] == 1


async def test_a_large_request_body_streams_through_and_comes_back_intact(
    start_sidecar: SidecarFactory, upstream: FaultyUpstream, client: aiohttp.ClientSession
) -> None:
    base = await _listener(start_sidecar, upstream)
    payload = bytes(range(256)) * 40_000  # ~10 MB

    async def chunks():  # type: ignore[no-untyped-def]
        for i in range(0, len(payload), 100_000):
            yield payload[i : i + 100_000]

    async with client.post(f"{base}/echo", data=chunks()) as resp:
        assert resp.status == 200
        assert resp.headers["X-Method"] == "POST"
        body = await resp.read()
    assert hashlib.sha256(body).digest() == hashlib.sha256(payload).digest()


async def test_a_small_request_body_with_a_length_is_forwarded_with_that_length(
    start_sidecar: SidecarFactory, upstream: FaultyUpstream, client: aiohttp.ClientSession
) -> None:
    base = await _listener(start_sidecar, upstream)
    async with client.put(f"{base}/echo", data=b"hello world", skip_auto_headers=["Content-Type"]) as resp:
        assert await resp.read() == b"hello world"
    assert upstream.last_headers["Content-Length"] == "11"
    assert "Content-Type" not in upstream.last_headers


async def test_a_chunked_response_streams_through_whole(
    start_sidecar: SidecarFactory, upstream: FaultyUpstream, client: aiohttp.ClientSession
) -> None:
    base = await _listener(start_sidecar, upstream)
    async with client.get(f"{base}/chunked/500") as resp:
        assert resp.status == 200
        body = await resp.read()
    assert body == b"".join(f"{i:04d}".encode() * 256 for i in range(500))


async def test_head_and_no_content_answers_carry_no_body(
    start_sidecar: SidecarFactory, upstream: FaultyUpstream, client: aiohttp.ClientSession
) -> None:
    base = await _listener(start_sidecar, upstream)
    async with client.head(f"{base}/big/1") as resp:
        assert resp.status == 200
        assert resp.headers["Content-Length"] == str(1024 * 1024)
        assert await resp.read() == b""
    async with client.get(f"{base}/status/204") as resp:
        assert resp.status == 204
        assert await resp.read() == b""
    async with client.get(f"{base}/ok") as resp:  # the connection is still usable
        assert await resp.text() == "ok"


async def test_an_upstream_error_status_is_passed_through_not_replaced(
    start_sidecar: SidecarFactory, upstream: FaultyUpstream, client: aiohttp.ClientSession
) -> None:
    base = await _listener(start_sidecar, upstream)
    async with client.get(f"{base}/status/500") as resp:
        assert resp.status == 500
        assert await resp.text() == "status"
        assert "x-breakwater" not in resp.headers


async def test_expect_100_continue_is_answered_by_the_proxy(
    start_sidecar: SidecarFactory, upstream: FaultyUpstream
) -> None:
    base = await _listener(start_sidecar, upstream)
    port = int(base.rsplit(":", 1)[1])
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(b"POST /echo HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\nExpect: 100-continue\r\n\r\n")
        await writer.drain()
        interim = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)
        assert interim.startswith(b"HTTP/1.1 100")
        writer.write(b"hello")
        await writer.drain()
        head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)
        assert head.startswith(b"HTTP/1.1 200")
    finally:
        writer.close()
    assert "Expect" not in upstream.last_headers


async def test_keep_alive_connections_to_the_upstream_are_reused(
    start_sidecar: SidecarFactory, upstream: FaultyUpstream, client: aiohttp.ClientSession
) -> None:
    base = await _listener(start_sidecar, upstream)
    assert upstream.runner is not None
    assert upstream.runner.server is not None
    for _ in range(20):
        async with client.get(f"{base}/ok") as resp:
            await resp.read()
    assert len(upstream.runner.server.connections) == 1
