"""The forward-proxy listener on the full path: what the fast path hands over (CONNECT, upgrades), and
every request when the fast path is off. Routing and refusals are `breakwater.proxy.targets`'.

``CONNECT host:port`` opens a tunnel. For a known upstream its breaker decides at connect level: an
open breaker answers 503, a failed connect counts as a failure, a connect that succeeds as a success;
what flows inside the tunnel (usually TLS) is opaque and not judged.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from typing import Any, Final, cast

from aiohttp import web

from breakwater.breaker import REJECTED, Outcome
from breakwater.proxy.answers import Answer, plain, retry_after_header
from breakwater.proxy.full.exchange import FullExchange
from breakwater.proxy.full.headers import to_response
from breakwater.proxy.targets import PASSTHROUGH_TIMEOUT, ForwardRouter, parse_absolute, split_authority
from breakwater.proxy.upstream import LiveUpstream

__all__ = ["FullForwardProxy"]

log = logging.getLogger(__name__)

_TUNNEL_CHUNK: Final = 64 * 1024
_TUNNEL_HIGH_WATER: Final = 256 * 1024


class FullForwardProxy:
    """Serves forward-proxy requests with aiohttp; routes through the sidecar's one `ForwardRouter`."""

    def __init__(self, *, router: ForwardRouter, exchange: FullExchange) -> None:
        self.router = router
        self._exchange = exchange

    async def handle(self, request: web.BaseRequest) -> web.StreamResponse:
        if request.method == "CONNECT":
            return await self._connect(request)
        parsed = parse_absolute(request.raw_path)
        if isinstance(parsed, Answer):
            return to_response(self.router.bad_request(parsed))
        routed = self.router.route(parsed.host, parsed.port)
        if isinstance(routed, Answer):
            return to_response(routed)
        return await self._exchange.forward(request, routed, host=parsed.authority, path_qs=parsed.path_qs)

    # ------------------------------------------------------------------------------------------------
    # CONNECT tunnels
    # ------------------------------------------------------------------------------------------------

    async def _connect(self, request: web.BaseRequest) -> web.StreamResponse:
        parts = split_authority(request.raw_path, None)
        if parts is None:
            return to_response(self.router.bad_request(plain(400, "bad-target", "CONNECT needs host:port\n")))
        host, port = parts
        routed = self.router.route(host, port)
        if isinstance(routed, Answer):
            return to_response(routed)
        return await self._tunnel(request, routed.host, routed.port, routed)

    async def _tunnel(
        self, request: web.BaseRequest, host: str, port: int, up: LiveUpstream | None
    ) -> web.StreamResponse:
        """Tunnel to (host, port); `up` (None: no breaker) judges the connect."""
        loop = asyncio.get_running_loop()
        token = -1
        stats = self.router.stats
        if up is not None:
            up.stats.full_path += 1
            token = up.breaker.try_acquire()
            if token == REJECTED:
                up.stats.rejected += 1
                answer = plain(503, "open", f"upstream {up.name} circuit open\n")
                answer.headers.append(("Retry-After", retry_after_header(up.breaker.retry_after())))
                return to_response(answer)
        timeout = up.timeout if up is not None else PASSTHROUGH_TIMEOUT
        start = loop.time()
        try:
            async with asyncio.timeout(timeout):
                reader, writer = await asyncio.open_connection(host, port)
        except (TimeoutError, OSError) as exc:
            elapsed = loop.time() - start
            timed_out = isinstance(exc, TimeoutError)
            if up is not None:
                counts = up.failures.timeouts if timed_out else up.failures.connect_errors
                up.breaker.on_result(token, Outcome.FAILURE if counts else Outcome.IGNORED, elapsed)
                up.stats.observe(elapsed)
                up.stats.failures += 1
            if timed_out:
                return to_response(plain(504, "timeout", f"connecting to {host}:{port} timed out\n"))
            return to_response(plain(502, "connect-error", f"cannot connect to {host}:{port}: {exc}\n"))
        except BaseException:
            if up is not None:
                up.breaker.on_result(token, Outcome.IGNORED, loop.time() - start)
            raise
        if up is not None:
            elapsed = loop.time() - start
            up.breaker.on_result(token, Outcome.SUCCESS, elapsed)
            up.stats.observe(elapsed)
            up.stats.successes += 1
        stats.tunnels_total += 1
        stats.tunnels_active += 1
        try:
            return await self._pump(request, reader, writer)
        finally:
            stats.tunnels_active -= 1
            writer.close()

    async def _pump(
        self, request: web.BaseRequest, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> web.StreamResponse:
        resp = web.StreamResponse(status=200, reason="Connection Established")
        try:
            await resp.prepare(request)
        except ConnectionError:
            return resp
        protocol = request.protocol
        client = request.transport
        sink = _TunnelSink(writer, client)
        # The same hook aiohttp uses for WebSockets: from now on the client's bytes come to `sink`.
        protocol.set_parser(cast(Any, sink))
        try:
            while True:
                try:
                    chunk = await reader.read(_TUNNEL_CHUNK)
                except OSError:
                    break
                if not chunk:
                    break
                try:
                    await resp.write(chunk)
                except ConnectionError:
                    break
        finally:
            sink.close()
            protocol.force_close()
        return resp


class _TunnelSink:
    """Receives the client's bytes after CONNECT and writes them to the upstream, with backpressure."""

    __slots__ = ("_client", "_closed", "_drainer", "_writer")

    def __init__(self, writer: asyncio.StreamWriter, client: asyncio.Transport | None) -> None:
        self._writer = writer
        self._client = client
        self._closed = False
        self._drainer: asyncio.Task[None] | None = None

    def feed_data(self, data: bytes) -> tuple[bool, bytes]:
        if self._closed or not data:
            return False, b""
        writer = self._writer
        if writer.is_closing():
            return False, b""
        writer.write(data)
        if (
            self._drainer is None
            and self._client is not None
            and writer.transport.get_write_buffer_size() > _TUNNEL_HIGH_WATER
        ):
            self._client.pause_reading()
            self._drainer = asyncio.get_running_loop().create_task(self._drain())
        return False, b""

    async def _drain(self) -> None:
        try:
            with contextlib.suppress(ConnectionError, OSError):
                await self._writer.drain()
        finally:
            self._drainer = None
            if self._client is not None and not self._client.is_closing():
                self._client.resume_reading()

    def feed_eof(self) -> None:
        """The client went away: the tunnel ends (the upstream side is closed, its reader sees EOF)."""
        self.close()

    def close(self) -> None:
        if not self._closed:
            self._closed = True
            self._writer.close()
            if self._drainer is not None:
                self._drainer.cancel()
