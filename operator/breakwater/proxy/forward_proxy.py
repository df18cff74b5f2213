"""The HTTP forward-proxy listener: protection for apps that honour ``HTTP_PROXY``, without code changes.

- Absolute-form requests (``GET http://payments.shop:8080/x HTTP/1.1``) are routed by the target's
  host and port to the matching upstream (its name, or for a ``*.svc.<domain>`` name the shorter
  ``name.ns`` / ``name.ns.svc`` forms) and take exactly the path of a request on that upstream's own
  listener, except that the client's ``Host`` is kept.
- Unknown targets pass through unprotected (no breaker, counted) or are refused with 403
  (``forwardProxy.unknownHosts``).
- ``CONNECT host:port`` opens a tunnel. For a known upstream its breaker decides at connect level: an
  open breaker answers 503, a failed connect counts as a failure, a connect that succeeds as a success;
  what flows inside the tunnel (usually TLS) is opaque and not judged.
- Origin-form requests (a client talking to the proxy port as if it were a server) get 400.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections import OrderedDict
from collections.abc import Callable
from typing import Any, Final, cast

from aiohttp import web

from breakwater.api.sidecar import UpstreamConfig
from breakwater.breaker import REJECTED, Mode, Outcome
from breakwater.proxy.forwarding import Forwarder, retry_after_header
from breakwater.proxy.headers import MARKER
from breakwater.proxy.upstream import LiveParts, LiveUpstream, RouteTable

__all__ = ["PASSTHROUGH_TIMEOUT", "ForwardProxy", "ForwardProxyStats"]

log = logging.getLogger(__name__)

PASSTHROUGH_TIMEOUT: Final = 60.0
"""The silence allowed to an unknown (unprotected) upstream, and to any tunnel's connect."""
_PASSTHROUGH_CACHE: Final = 256
_TUNNEL_CHUNK: Final = 64 * 1024
_TUNNEL_HIGH_WATER: Final = 256 * 1024


class ForwardProxyStats:
    __slots__ = ("bad_requests", "passthrough", "refused", "tunnels_active", "tunnels_total")

    def __init__(self) -> None:
        self.passthrough = 0
        self.refused = 0
        self.bad_requests = 0
        self.tunnels_total = 0
        self.tunnels_active = 0

    def to_json(self) -> dict[str, int]:
        return {
            "passThrough": self.passthrough,
            "refused": self.refused,
            "badRequests": self.bad_requests,
            "tunnelsTotal": self.tunnels_total,
            "tunnelsActive": self.tunnels_active,
        }


def _answer(status: int, marker: str, message: str) -> web.Response:
    return web.Response(status=status, headers={MARKER: marker}, text=message + "\n")


class ForwardProxy:
    """Serves the forward-proxy listener; reads the current `RouteTable` through `routes` on each request."""

    def __init__(
        self,
        *,
        routes: Callable[[], RouteTable],
        forwarder: Forwarder,
        clock: Callable[[], float],
        own_address: Callable[[], tuple[str, int] | None],
    ) -> None:
        self._routes = routes
        self._forwarder = forwarder
        self._own_address = own_address
        self.stats = ForwardProxyStats()
        passthrough_cfg = self._passthrough_config("passthrough.invalid", 80)
        self._passthrough_parts = LiveParts.create(passthrough_cfg, clock=clock, on_transition=lambda t: None)
        self._passthrough: OrderedDict[tuple[str, int], LiveUpstream] = OrderedDict()

    @staticmethod
    def _passthrough_config(host: str, port: int) -> UpstreamConfig:
        return UpstreamConfig(
            name="passthrough",
            host=host,
            port=port,
            mode=Mode.DISABLED,
            timeout_seconds=PASSTHROUGH_TIMEOUT,
        )

    def _passthrough_upstream(self, host: str, port: int) -> LiveUpstream:
        key = (host, port)
        up = self._passthrough.get(key)
        if up is None:
            up = LiveUpstream(self._passthrough_config(host, port), self._passthrough_parts)
            self._passthrough[key] = up
            if len(self._passthrough) > _PASSTHROUGH_CACHE:
                self._passthrough.popitem(last=False)
        else:
            self._passthrough.move_to_end(key)
        return up

    async def handle(self, request: web.BaseRequest) -> web.StreamResponse:
        if request.method == "CONNECT":
            return await self._connect(request)
        if request.raw_path[:1] == "/":
            self.stats.bad_requests += 1
            return _answer(400, "not-a-proxy-request", "this is a forward proxy: send absolute-form requests")
        url = request.url
        if url.scheme != "http":
            self.stats.bad_requests += 1
            return _answer(400, "unsupported-scheme", f"{url.scheme!r} is not proxied; use CONNECT for TLS")
        host = (url.raw_host or "").rstrip(".").lower()
        port = url.port or 80
        routes = self._routes()
        up = routes.by_authority.get((host, port))
        if up is not None:
            return await self._forwarder.forward(request, up, keep_host=True)
        return await self._unknown(request, routes, host, port)

    async def _unknown(
        self, request: web.BaseRequest, routes: RouteTable, host: str, port: int
    ) -> web.StreamResponse:
        if routes.refuse_unknown:
            self.stats.refused += 1
            return _answer(403, "refused", f"{host}:{port} is not a configured upstream")
        if self._is_self(host, port):
            self.stats.bad_requests += 1
            return _answer(508, "loop", "the request targets this proxy itself")
        try:
            up = self._passthrough_upstream(host, port)
        except ValueError:
            self.stats.bad_requests += 1
            return _answer(400, "bad-target", f"cannot proxy to {host}:{port}")
        self.stats.passthrough += 1
        return await self._forwarder.forward(request, up, keep_host=True)

    def _is_self(self, host: str, port: int) -> bool:
        own = self._own_address()
        if own is None:
            return False
        address, own_port = own
        return port == own_port and host in {address, "localhost", "127.0.0.1", "::1", "[::1]"}

    # ------------------------------------------------------------------------------------------------
    # CONNECT tunnels
    # ------------------------------------------------------------------------------------------------

    async def _connect(self, request: web.BaseRequest) -> web.StreamResponse:
        url = request.url
        host = (url.raw_host or "").strip("[]").rstrip(".").lower()
        port = url.port
        if not host or port is None:
            self.stats.bad_requests += 1
            return _answer(400, "bad-target", "CONNECT needs host:port")
        routes = self._routes()
        up = routes.by_authority.get((host, port))
        if up is None:
            if routes.refuse_unknown:
                self.stats.refused += 1
                return _answer(403, "refused", f"{host}:{port} is not a configured upstream")
            if self._is_self(host, port):
                self.stats.bad_requests += 1
                return _answer(508, "loop", "the request targets this proxy itself")
            self.stats.passthrough += 1
            return await self._tunnel(request, host, port, None)
        return await self._tunnel(request, up.host, up.port, up)

    async def _tunnel(
        self, request: web.BaseRequest, host: str, port: int, up: LiveUpstream | None
    ) -> web.StreamResponse:
        loop = asyncio.get_running_loop()
        token = -1
        if up is not None:
            token = up.breaker.try_acquire()
            if token == REJECTED:
                up.stats.rejected += 1
                retry_after = up.breaker.retry_after()
                resp = _answer(503, "open", f"upstream {up.name} circuit open")
                resp.headers["Retry-After"] = retry_after_header(retry_after)
                return resp
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
                return _answer(504, "timeout", f"connecting to {host}:{port} timed out")
            return _answer(502, "connect-error", f"cannot connect to {host}:{port}: {exc}")
        except BaseException:
            if up is not None:
                up.breaker.on_result(token, Outcome.IGNORED, loop.time() - start)
            raise
        if up is not None:
            elapsed = loop.time() - start
            up.breaker.on_result(token, Outcome.SUCCESS, elapsed)
            up.stats.observe(elapsed)
            up.stats.successes += 1
        self.stats.tunnels_total += 1
        self.stats.tunnels_active += 1
        try:
            return await self._pump(request, reader, writer)
        finally:
            self.stats.tunnels_active -= 1
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
