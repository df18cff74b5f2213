"""Helpers for the sidecar tests: real upstream servers on 127.0.0.1 with fault modes, and sidecars.

Every server, sidecar and client here lives on the loopback interface and in the test's event loop.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import socket
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from pathlib import Path
from typing import Any

from aiohttp import web
from multidict import CIMultiDict

from breakwater.proxy import Sidecar, run_sidecar

LOOPBACK = "127.0.0.1"


class FaultyUpstream:
    """An aiohttp server with one route per fault mode; `hits` counts requests per path."""

    def __init__(self) -> None:
        self.hits: Counter[str] = Counter()
        self.failing = False
        self.fail_next = 0
        self.last_headers: dict[str, str] = {}
        self.release = asyncio.Event()
        self.runner: web.AppRunner | None = None
        self.port = 0

    @property
    def origin(self) -> str:
        return f"http://{LOOPBACK}:{self.port}"

    def app(self) -> web.Application:
        app = web.Application(client_max_size=64 * 1024 * 1024)
        app.router.add_route("*", "/ok", self.ok)
        app.router.add_route("*", "/echo", self.echo)
        app.router.add_get("/status/{code}", self.status)
        app.router.add_get("/flaky", self.flaky)
        app.router.add_route("*", "/countdown", self.countdown)
        app.router.add_post("/consume", self.consume)
        app.router.add_get("/slow/{seconds}", self.slow)
        app.router.add_get("/hang", self.hang)
        app.router.add_get("/reset", self.reset)
        app.router.add_get("/reset-small", self.reset_small)
        app.router.add_get("/big/{mib}", self.big)
        app.router.add_get("/chunked/{n}", self.chunked)
        app.router.add_get("/trickle/{seconds}", self.trickle)
        app.router.add_get("/headers", self.headers)
        app.router.add_get("/cache/{name}", self.cache)
        app.router.add_route("*", "/{tail:.*}", self.ok)
        return app

    async def start(self) -> None:
        self.runner = web.AppRunner(self.app(), access_log=None, shutdown_timeout=0.5)
        await self.runner.setup()
        site = web.TCPSite(self.runner, LOOPBACK, 0)
        await site.start()
        self.port = site.port

    async def stop(self) -> None:
        self.release.set()
        if self.runner is not None:
            await self.runner.cleanup()

    def _hit(self, request: web.Request) -> None:
        self.hits[request.path] += 1
        self.last_headers = dict(request.headers)

    async def ok(self, request: web.Request) -> web.Response:
        self._hit(request)
        return web.Response(text="ok", headers={"X-Upstream": "yes"})

    async def echo(self, request: web.Request) -> web.StreamResponse:
        self._hit(request)
        resp = web.StreamResponse(headers={"X-Method": request.method})
        await resp.prepare(request)
        async for chunk in request.content.iter_any():
            await resp.write(chunk)
        await resp.write_eof()
        return resp

    async def status(self, request: web.Request) -> web.Response:
        self._hit(request)
        return web.Response(status=int(request.match_info["code"]), text="status")

    async def flaky(self, request: web.Request) -> web.Response:
        self._hit(request)
        if self.failing:
            return web.Response(status=503, text="down")
        return web.Response(text="ok")

    async def countdown(self, request: web.Request) -> web.Response:
        """503 for the next `fail_next` requests, then 200."""
        self._hit(request)
        if self.fail_next > 0:
            self.fail_next -= 1
            return web.Response(status=503, text="not yet")
        return web.Response(text="finally")

    async def consume(self, request: web.Request) -> web.Response:
        """Reads the whole body before answering with its length."""
        self._hit(request)
        try:
            body = await request.read()
        except ConnectionError:
            return web.Response(status=499)
        return web.Response(text=str(len(body)))

    async def slow(self, request: web.Request) -> web.Response:
        self._hit(request)
        await asyncio.sleep(float(request.match_info["seconds"]))
        return web.Response(text="slow ok")

    async def hang(self, request: web.Request) -> web.Response:
        self._hit(request)
        await self.release.wait()
        return web.Response(text="released")

    async def reset(self, request: web.Request) -> web.StreamResponse:
        self._hit(request)
        resp = web.StreamResponse()
        resp.content_length = 1_000_000
        await resp.prepare(request)
        await resp.write(b"x" * 200_000)
        await asyncio.sleep(0.01)
        assert request.transport is not None
        request.transport.abort()
        return resp

    async def reset_small(self, request: web.Request) -> web.StreamResponse:
        self._hit(request)
        resp = web.StreamResponse()
        resp.content_length = 10_000
        await resp.prepare(request)
        await resp.write(b"x" * 100)
        await asyncio.sleep(0.01)
        assert request.transport is not None
        request.transport.abort()
        return resp

    async def big(self, request: web.Request) -> web.StreamResponse:
        self._hit(request)
        mib = int(request.match_info["mib"])
        resp = web.StreamResponse()
        resp.content_length = mib * 1024 * 1024
        await resp.prepare(request)
        if request.method == "HEAD":
            return resp
        block = b"b" * (64 * 1024)
        for _ in range(mib * 16):
            await resp.write(block)
        await resp.write_eof()
        return resp

    async def chunked(self, request: web.Request) -> web.StreamResponse:
        self._hit(request)
        resp = web.StreamResponse()
        resp.enable_chunked_encoding()
        await resp.prepare(request)
        for i in range(int(request.match_info["n"])):
            await resp.write(f"{i:04d}".encode() * 256)
        await resp.write_eof()
        return resp

    async def trickle(self, request: web.Request) -> web.StreamResponse:
        """Its head and 64 KiB at once, then one byte every 50 ms for `seconds` (progress, no silence)."""
        self._hit(request)
        trickled = int(float(request.match_info["seconds"]) / 0.05)
        resp = web.StreamResponse()
        resp.content_length = 65_536 + trickled
        await resp.prepare(request)
        await resp.write(b"t" * 65_536)
        for _ in range(trickled):
            await resp.write(b"t")
            await asyncio.sleep(0.05)
        await resp.write_eof()
        return resp

    async def headers(self, request: web.Request) -> web.Response:
        self._hit(request)
        return web.json_response(
            dict(request.headers),
            headers={
                "Connection": "keep-alive, X-Hop",
                "X-Hop": "must-not-pass",
                "Keep-Alive": "timeout=5",
                "X-End-To-End": "passes",
            },
        )

    async def cache(self, request: web.Request) -> web.Response:
        self._hit(request)
        if self.failing:
            return web.Response(status=503, text="down")
        headers = CIMultiDict(("Vary", name) for name in request.query.getall("vary", ()))  # a line each
        if "cc" in request.query:
            headers["Cache-Control"] = request.query["cc"]
        n = self.hits[request.path]
        return web.Response(text=f"{request.match_info['name']}#{n}", headers=headers)


async def start_raw_server(reply: bytes, *, close: bool = True) -> tuple[asyncio.Server, int]:
    """A TCP server that reads a request head and answers `reply` verbatim (for malformed responses)."""

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        with contextlib.suppress(Exception):
            await reader.readuntil(b"\r\n\r\n")
            writer.write(reply)
            await writer.drain()
        if close:
            writer.close()

    server = await asyncio.start_server(handle, LOOPBACK, 0)
    return server, server.sockets[0].getsockname()[1]


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


class Conn:
    """A raw client connection that reads whole responses (Content-Length, chunked or until close)."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader = reader
        self.writer = writer

    async def send(self, data: bytes) -> None:
        self.writer.write(data)
        await self.writer.drain()

    async def response(self, *, head_only: bool = False) -> tuple[int, dict[str, str], bytes]:
        head = await asyncio.wait_for(self.reader.readuntil(b"\r\n\r\n"), 5)
        lines = head.decode("latin-1").split("\r\n")
        status = int(lines[0].split()[1])
        headers = {}
        for line in lines[1:]:
            if line:
                name, _, value = line.partition(":")
                headers[name.strip().lower()] = value.strip()
        if head_only or status in (204, 304) or 100 <= status < 200:
            return status, headers, b""
        if "content-length" in headers:
            body = await asyncio.wait_for(self.reader.readexactly(int(headers["content-length"])), 5)
        elif headers.get("transfer-encoding") == "chunked":
            body = b""
            while True:
                size = int((await asyncio.wait_for(self.reader.readuntil(b"\r\n"), 5)).split(b";")[0], 16)
                chunk = await asyncio.wait_for(self.reader.readexactly(size + 2), 5)
                if size == 0:
                    break
                body += chunk[:-2]
        else:
            body = await asyncio.wait_for(self.reader.read(), 5)
        return status, headers, body

    async def closed(self, *, within: float = 3.0) -> bool:
        """Whether the other side closes (or resets) the connection within `within` seconds, sending
        nothing more: a connection still open then is not closed."""
        try:
            return await asyncio.wait_for(self.reader.read(1), within) == b""
        except ConnectionError:
            return True
        except TimeoutError:
            return False


@contextlib.asynccontextmanager
async def connect(port: int) -> AsyncIterator[Conn]:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        yield Conn(reader, writer)
    finally:
        writer.close()


def free_port() -> int:
    """A loopback port nobody listens on (connecting to it is refused)."""
    with socket.socket() as s:
        s.bind((LOOPBACK, 0))
        return int(s.getsockname()[1])


def upstream_doc(name: str, port: int, **overrides: Any) -> dict[str, Any]:
    doc: dict[str, Any] = {
        "name": name,
        "policy": f"shop/{name}",
        "host": LOOPBACK,
        "port": port,
        "listenPort": 0,
    }
    doc.update(overrides)
    return doc


def sidecar_doc(*upstreams: dict[str, Any], **top: Any) -> dict[str, Any]:
    doc: dict[str, Any] = {
        "admin": {"port": 0, "address": LOOPBACK},
        "upstreams": list(upstreams),
    }
    doc.update(top)
    return doc


def open_fds() -> int:
    return len(os.listdir("/proc/self/fd"))


def rss_bytes() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


class SidecarFactory:
    """Starts sidecars from config documents written to files (so reloads can rewrite them): the first
    sidecar's is `path` (what `write` rewrites), each further one has its own, or the sidecars of one
    test would reload each other's configs."""

    def __init__(self, tmp_path: Path, stack: contextlib.AsyncExitStack, *, path: str = "fast") -> None:
        self.path = tmp_path / "sidecar.json"
        self.data_path = path  # "fast" or "full": which path serves the data plane
        self._stack = stack
        self._started = 0

    def write(self, doc: dict[str, Any], path: Path | None = None) -> None:
        path = path or self.path
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps(doc))
        tmp.replace(path)

    async def __call__(self, doc: dict[str, Any], **options: Any) -> Sidecar:
        self._started += 1
        path = self.path if self._started == 1 else self.path.with_name(f"sidecar-{self._started}.json")
        self.write(doc, path)
        options.setdefault("poll_interval", 0.05)
        options.setdefault("fast_path", self.data_path == "fast")
        options.setdefault("drain_seconds", 2.0)
        return await self._stack.enter_async_context(run_sidecar(path, **options))


async def eventually(check: Callable[[], bool | Awaitable[bool]], *, within: float = 5.0) -> None:
    """Wait until `check` holds (polling), failing after `within` seconds."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + within
    while True:
        result = check()
        if not isinstance(result, bool):
            result = await result
        if result:
            return
        if loop.time() > deadline:
            raise AssertionError(f"condition not met within {within}s")
        await asyncio.sleep(0.02)
