"""The forward-proxy listener: real clients through HTTP_PROXY, unknown hosts, CONNECT tunnels."""

from __future__ import annotations

import asyncio
import os
import shutil
from typing import Any

import aiohttp
import pytest
import requests

from breakwater.breaker import State
from breakwater.proxy import Sidecar
from tests.unit.proxy.helpers import FaultyUpstream, SidecarFactory, free_port, sidecar_doc, upstream_doc

pytestmark = pytest.mark.timeout(60)


async def _start(
    start_sidecar: SidecarFactory, *upstreams: dict[str, Any], unknown: str = "PassThrough"
) -> tuple[Sidecar, str]:
    sidecar = await start_sidecar(
        sidecar_doc(*upstreams, forwardProxy={"enabled": True, "port": 0, "unknownHosts": unknown})
    )
    return sidecar, f"http://127.0.0.1:{sidecar.forward_proxy_port}"


def _requests_get(url: str, proxy: str) -> requests.Response:
    with requests.Session() as session:
        session.trust_env = False  # NO_PROXY from the environment must not bypass the proxy
        return session.get(url, proxies={"http": proxy}, timeout=10)


async def test_a_requests_client_with_a_proxy_is_protected_by_the_upstreams_breaker(
    start_sidecar: SidecarFactory, upstream: FaultyUpstream
) -> None:
    sidecar, proxy = await _start(
        start_sidecar,
        upstream_doc("up", upstream.port, breaker={"consecutiveFailures": 2, "openSeconds": 30}),
    )
    resp = await asyncio.to_thread(_requests_get, f"{upstream.origin}/headers", proxy)
    assert resp.status_code == 200
    assert resp.json()["Host"] == f"127.0.0.1:{upstream.port}"
    assert "Proxy-Connection" not in resp.json()
    upstream.failing = True
    for _ in range(2):
        resp = await asyncio.to_thread(_requests_get, f"{upstream.origin}/flaky", proxy)
        assert resp.status_code == 503
    resp = await asyncio.to_thread(_requests_get, f"{upstream.origin}/flaky", proxy)
    assert resp.status_code == 503
    assert resp.headers["x-breakwater"] == "open"
    assert sidecar.upstream("up").breaker.state is State.OPEN
    assert upstream.hits["/flaky"] == 2


@pytest.mark.skipif(shutil.which("curl") is None, reason="curl is not installed")
async def test_curl_honours_http_proxy_and_goes_through_the_sidecar(
    start_sidecar: SidecarFactory, upstream: FaultyUpstream
) -> None:
    sidecar, proxy = await _start(start_sidecar, upstream_doc("up", upstream.port))
    env = {k: v for k, v in os.environ.items() if k.lower() not in {"no_proxy", "http_proxy", "https_proxy"}}
    env["http_proxy"] = proxy
    process = await asyncio.create_subprocess_exec(
        "curl", "-sS", "--max-time", "10", "-D", "-", f"{upstream.origin}/ok",
        env=env, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    out, err = await process.communicate()
    assert process.returncode == 0, err
    assert out.endswith(b"ok")
    assert b"X-Upstream: yes" in out
    assert sidecar.upstream("up").stats.successes == 1


async def test_unknown_hosts_pass_through_unprotected_when_allowed(
    start_sidecar: SidecarFactory, upstream: FaultyUpstream, client: aiohttp.ClientSession
) -> None:
    other = FaultyUpstream()
    await other.start()
    try:
        sidecar, proxy = await _start(start_sidecar, upstream_doc("up", upstream.port))
        async with client.get(f"{other.origin}/ok", proxy=proxy) as resp:
            assert (resp.status, await resp.text()) == (200, "ok")
        assert other.hits["/ok"] == 1
        assert sidecar.forward_proxy is not None
        assert sidecar.forward_proxy.stats.passthrough == 1
        assert sidecar.upstream("up").stats.requests == 0
    finally:
        await other.stop()


async def test_unknown_hosts_are_refused_when_configured_so(
    start_sidecar: SidecarFactory, upstream: FaultyUpstream, client: aiohttp.ClientSession
) -> None:
    _sidecar, proxy = await _start(start_sidecar, upstream_doc("up", upstream.port), unknown="Refuse")
    async with client.get(f"http://127.0.0.1:{free_port()}/x", proxy=proxy) as resp:
        assert resp.status == 403
        assert resp.headers["x-breakwater"] == "refused"
    async with client.get(f"{upstream.origin}/ok", proxy=proxy) as resp:
        assert resp.status == 200


async def test_a_plain_request_to_the_proxy_port_is_a_bad_request(
    start_sidecar: SidecarFactory, upstream: FaultyUpstream, client: aiohttp.ClientSession
) -> None:
    _, proxy = await _start(start_sidecar, upstream_doc("up", upstream.port))
    async with client.get(f"{proxy}/ok") as resp:
        assert resp.status == 400
    async with client.get(f"{proxy}/x", proxy=proxy) as resp:  # itself, through itself
        assert resp.status == 508


async def _echo_server() -> tuple[asyncio.Server, int]:
    async def echo(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while data := await reader.read(65536):
                writer.write(data)
                await writer.drain()
        except ConnectionError:
            pass
        finally:
            writer.close()

    server = await asyncio.start_server(echo, "127.0.0.1", 0)
    return server, server.sockets[0].getsockname()[1]


async def _connect(proxy_port: int, target: str) -> tuple[asyncio.StreamReader, asyncio.StreamWriter, bytes]:
    reader, writer = await asyncio.open_connection("127.0.0.1", proxy_port)
    writer.write(f"CONNECT {target} HTTP/1.1\r\nHost: {target}\r\n\r\n".encode())
    await writer.drain()
    head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)
    return reader, writer, head


async def test_a_connect_tunnel_carries_bytes_both_ways_and_counts_as_a_success(
    start_sidecar: SidecarFactory,
) -> None:
    server, port = await _echo_server()
    try:
        sidecar, _ = await _start(start_sidecar, upstream_doc("tls", port))
        proxy_port = sidecar.forward_proxy_port
        assert proxy_port is not None
        reader, writer, head = await _connect(proxy_port, f"127.0.0.1:{port}")
        assert head.startswith(b"HTTP/1.1 200")
        assert b"Transfer-Encoding" not in head
        assert b"Content-Length" not in head
        payload = os.urandom(300_000)
        writer.write(payload)
        await writer.drain()
        assert await asyncio.wait_for(reader.readexactly(len(payload)), 10) == payload
        assert sidecar.forward_proxy is not None
        assert sidecar.forward_proxy.stats.tunnels_active == 1
        writer.close()
        for _ in range(100):
            if sidecar.forward_proxy.stats.tunnels_active == 0:
                break
            await asyncio.sleep(0.02)
        assert sidecar.forward_proxy.stats.tunnels_active == 0
        assert sidecar.upstream("tls").stats.successes == 1
    finally:
        server.close()


async def test_connect_to_a_failing_upstream_trips_its_breaker_and_then_is_rejected(
    start_sidecar: SidecarFactory,
) -> None:
    dead = free_port()
    sidecar, _ = await _start(
        start_sidecar, upstream_doc("tls", dead, breaker={"consecutiveFailures": 2, "openSeconds": 30})
    )
    proxy_port = sidecar.forward_proxy_port
    assert proxy_port is not None
    for expected in (b"HTTP/1.1 502", b"HTTP/1.1 502", b"HTTP/1.1 503"):
        _, writer, head = await _connect(proxy_port, f"127.0.0.1:{dead}")
        assert head.startswith(expected), head
        writer.close()
    assert b"Retry-After" in head
    assert sidecar.upstream("tls").breaker.state is State.OPEN


@pytest.mark.skipif(shutil.which("curl") is None, reason="curl is not installed")
async def test_curl_can_tunnel_through_the_proxy_with_connect(
    start_sidecar: SidecarFactory, upstream: FaultyUpstream
) -> None:
    sidecar, proxy = await _start(start_sidecar, upstream_doc("up", upstream.port))
    process = await asyncio.create_subprocess_exec(
        "curl", "-sS", "--max-time", "10", "--proxytunnel", "--proxy", proxy, "--noproxy", "",
        f"{upstream.origin}/ok",
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    out, err = await process.communicate()
    assert process.returncode == 0, err
    assert out == b"ok"
    assert sidecar.forward_proxy is not None
    assert sidecar.forward_proxy.stats.tunnels_total == 1


async def _raw_proxy(proxy_port: int, data: bytes) -> bytes:
    reader, writer = await asyncio.open_connection("127.0.0.1", proxy_port)
    try:
        writer.write(data)
        await writer.drain()
        head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)
        length = 0
        for line in head.split(b"\r\n"):
            if line.lower().startswith(b"content-length:"):
                length = int(line.split(b":")[1])
        return head + await asyncio.wait_for(reader.readexactly(length), 5)
    finally:
        writer.close()


async def test_an_https_target_is_refused_and_never_sent_in_clear_text(
    start_sidecar: SidecarFactory, upstream: FaultyUpstream
) -> None:
    sidecar, _ = await _start(start_sidecar, upstream_doc("up", upstream.port))
    assert sidecar.forward_proxy_port is not None
    answer = await _raw_proxy(
        sidecar.forward_proxy_port,
        f"GET https://127.0.0.1:{upstream.port}/ok HTTP/1.1\r\nHost: 127.0.0.1:{upstream.port}\r\n"
        "Authorization: Basic c2VjcmV0OnNlY3JldA==\r\n\r\n".encode(),
    )
    assert answer.startswith(b"HTTP/1.1 400")
    assert b"x-breakwater: unsupported-scheme" in answer
    assert upstream.hits.total() == 0


async def test_the_upstream_gets_the_targets_authority_as_host_not_the_clients(
    start_sidecar: SidecarFactory, upstream: FaultyUpstream
) -> None:
    sidecar, _ = await _start(start_sidecar, upstream_doc("up", upstream.port))
    assert sidecar.forward_proxy_port is not None
    target = f"http://127.0.0.1:{upstream.port}/headers"
    answer = await _raw_proxy(
        sidecar.forward_proxy_port, f"GET {target} HTTP/1.1\r\nHost: another.vhost.example\r\n\r\n".encode()
    )
    assert answer.startswith(b"HTTP/1.1 200")
    assert upstream.last_headers["Host"] == f"127.0.0.1:{upstream.port}"
    assert sidecar.upstream("up").stats.successes == 1
