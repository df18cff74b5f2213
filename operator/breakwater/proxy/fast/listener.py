"""A fast-path listener: the protocol factory of one listening socket, and the engine they share.

`FastPath` owns what outlives a listener: the upstream connection pools, the requests' deadlines
and one periodic sweep (a
timer handle, re-armed) that closes idle client connections and expired pooled ones. `FastListener`
routes each request: on an upstream's own listener to that upstream (the current `RouteTable`'s, so a
reload takes effect at the next request), on the forward proxy by its absolute-form target.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from typing import Final, Protocol

from breakwater.proxy.answers import Answer, options_star, plain
from breakwater.proxy.fast.deadlines import Deadlines
from breakwater.proxy.fast.pool import Pools
from breakwater.proxy.fast.request import RequestHead
from breakwater.proxy.fast.server import ClientConnection
from breakwater.proxy.targets import ForwardRouter, parse_absolute
from breakwater.proxy.upstream import LiveUpstream, RouteTable

__all__ = ["FastListener", "FastPath", "HandOff", "RouteSource"]

HandOff = Callable[[asyncio.Transport, bytes], None]
"""Give a client connection (and the bytes it already sent) to the full path."""
_SWEEP_MAX: Final = 1.0


class RouteSource(Protocol):
    """Whoever holds the current routing table (the sidecar): read as an attribute, no call."""

    @property
    def routes(self) -> RouteTable: ...


class FastPath:
    """The fast path's shared state: pools, the idle sweep, the listeners' connections."""

    def __init__(self, *, source: RouteSource, router: ForwardRouter, idle_timeout: float,
                 pool_keepalive: float) -> None:  # fmt: skip
        self.source = source
        self.router = router
        self.idle_timeout = idle_timeout
        self.pools = Pools(pool_keepalive)
        self.deadlines = Deadlines()
        self.listeners: set[FastListener] = set()
        self._sweep: asyncio.TimerHandle | None = None

    def start(self) -> None:
        if self._sweep is None:
            self._arm()

    def _arm(self) -> None:
        interval = min(_SWEEP_MAX, self.idle_timeout / 4, self.pools.keepalive / 4)
        self._sweep = asyncio.get_running_loop().call_later(interval, self._run_sweep)

    def _run_sweep(self) -> None:
        now = time.monotonic()
        limit = self.idle_timeout
        for listener in self.listeners:
            for conn in list(listener.connections):
                if not conn.busy and now - conn.last_active > limit and conn.transport is not None:
                    conn.transport.close()
        self.pools.expire()
        self._arm()

    def close(self) -> None:
        if self._sweep is not None:
            self._sweep.cancel()
            self._sweep = None
        self.pools.close()
        self.deadlines.close()


class FastListener:
    """Serves one listening socket: `kind` is ``upstream`` (with the upstream's `name`) or ``forward``."""

    def __init__(self, engine: FastPath, kind: str, name: str, hand_off: HandOff) -> None:
        self.engine = engine
        self.kind = kind
        self.name = name
        self.hand_off = hand_off
        self.connections: set[ClientConnection] = set()
        engine.listeners.add(self)

    def __call__(self) -> ClientConnection:
        return ClientConnection(self)

    def route(self, req: RequestHead) -> LiveUpstream | Answer:
        if self.kind == "upstream":
            up = self.engine.source.routes.by_name.get(self.name)
            if up is None:
                return plain(503, "unknown-upstream", f"upstream {self.name} is no longer configured\n")
            if req.method == "CONNECT":
                return plain(405, "bad-request", "CONNECT goes to the forward proxy\n")
            target = req.target
            if target[:1] == b"/" or b"://" in target:
                return up
            if target == b"*" and req.method == "OPTIONS":
                return options_star()
            return plain(400, "bad-target", "not a request target this listener serves\n")
        router = self.engine.router
        parsed = parse_absolute(req.target.decode("latin-1"))
        if isinstance(parsed, Answer):
            return router.bad_request(parsed)
        routed = router.route(parsed.host, parsed.port)
        if isinstance(routed, LiveUpstream):
            req.host_line = b"Host: %b\r\n" % parsed.authority.encode("latin-1")
        return routed

    def bad_request(self, status: int) -> None:
        if self.kind == "forward":
            self.engine.router.stats.bad_requests += 1

    def close(self) -> None:
        self.engine.listeners.discard(self)

    def close_idle(self) -> None:
        for conn in list(self.connections):
            if not conn.busy and conn.transport is not None:
                conn.transport.close()

    def busy(self) -> int:
        return sum(1 for conn in self.connections if conn.busy)

    def abort_all(self) -> None:
        for conn in list(self.connections):
            if conn.transport is not None:
                conn.transport.abort()
