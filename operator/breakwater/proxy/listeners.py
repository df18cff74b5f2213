"""The data-plane listeners of a sidecar: one per upstream `listenPort`, and the forward proxy.

Each listening socket is served by the fast path (`proxy/fast/`), which hands what it does not serve
to an aiohttp server of the full path created on first need; with the fast path off, by that aiohttp
server alone.

A reload changes the set in two phases, `ListenerSet.prepare` then `ListenerChange.commit`: listeners
that stay are never touched; new ones are bound first, so a port that cannot be bound rolls the whole
reload back (`prepare` raises with removed listeners bound again); removed ones stop accepting at once
and drain in the background once committed.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Protocol

from breakwater.api.plain.sidecar import PlainSidecarConfig
from breakwater.proxy.fast.listener import FastListener, FastPath
from breakwater.proxy.logs import CONFIG_CHANNEL

if TYPE_CHECKING:
    from aiohttp import web

    from breakwater.proxy.full.server import FullServer

__all__ = ["ListenerChange", "ListenerKey", "ListenerSet"]

config_log = logging.getLogger(CONFIG_CHANNEL)

ListenerKey = tuple[str, str, str, int]  # (kind: "upstream" | "forward", upstream name or "", address, port)
Handler = Callable[["web.BaseRequest"], Awaitable["web.StreamResponse"]]
_BACKLOG = 1024


class _Listener(Protocol):
    key: ListenerKey

    @property
    def port(self) -> int: ...

    def connections(self) -> int: ...

    async def start(self, port: int) -> None: ...

    async def stop_accepting(self) -> None: ...

    async def drain(self, seconds: float) -> None: ...


class _FastSocket:
    """A socket served by the fast path; the full path's server is made when a connection is handed over."""

    def __init__(
        self, key: ListenerKey, engine: FastPath, handler: Callable[[], Handler], idle_timeout: float
    ) -> None:
        self.key = key
        self._handler = handler
        self._idle_timeout = idle_timeout
        self._full: FullServer | None = None
        self.protocol = FastListener(engine, key[0], key[1], self._hand_off)
        self._server: asyncio.Server | None = None
        self._port = 0

    @property
    def port(self) -> int:
        return self._port

    def _hand_off(self, transport: asyncio.Transport, data: bytes) -> None:
        from breakwater.proxy.full.server import hand_off

        if self._full is None:
            from breakwater.proxy.full.server import FullServer  # the full path loads on first need

            self._full = FullServer(self._handler(), idle_timeout=self._idle_timeout)
        hand_off(self._full, transport, data)

    def connections(self) -> int:
        full = len(self._full.connections) if self._full is not None else 0
        return len(self.protocol.connections) + full

    async def start(self, port: int) -> None:
        loop = asyncio.get_running_loop()
        self._server = await loop.create_server(self.protocol, self.key[2], port, backlog=_BACKLOG)
        self._port = self._server.sockets[0].getsockname()[1]

    async def stop_accepting(self) -> None:
        if self._server is not None:
            self._server.close()
            self._server = None

    async def drain(self, seconds: float) -> None:
        await self.stop_accepting()
        protocol = self.protocol
        protocol.close_idle()
        deadline = time.monotonic() + seconds
        full = self._full
        waits = [full.shutdown(seconds)] if full is not None else []
        while protocol.busy() and time.monotonic() < deadline:  # noqa: ASYNC110 - polled, at shutdown only
            await asyncio.sleep(0.02)
        protocol.abort_all()
        protocol.close()
        await asyncio.gather(*waits, return_exceptions=True)


def wanted(config: PlainSidecarConfig) -> list[ListenerKey]:
    """The listeners `config` asks for."""
    keys: list[ListenerKey] = [
        ("upstream", up.name, config.listen_address, up.listen_port)
        for up in config.upstreams
        if up.listen_port is not None
    ]
    if config.forward_proxy.enabled:
        keys.append(("forward", "", config.listen_address, config.forward_proxy.port))
    return keys


@dataclass
class ListenerSet:
    """The bound listeners; `handler(key)` serves a listener's requests on the full path; `fast` (None:
    the fast path is off) serves them first."""

    handler: Callable[[ListenerKey], Handler]
    idle_timeout: float
    drain_seconds: float
    fast: FastPath | None = None
    _bound: dict[ListenerKey, _Listener] = field(default_factory=dict)
    _draining: set[asyncio.Task[None]] = field(default_factory=set)

    def port(self, kind: str, upstream: str = "") -> int | None:
        for key, listener in self._bound.items():
            if key[0] == kind and key[1] == upstream:
                return listener.port
        return None

    def address(self, kind: str) -> tuple[str, int] | None:
        for key, listener in self._bound.items():
            if key[0] == kind:
                return key[2], listener.port
        return None

    def client_connections(self) -> int:
        """Client connections open on the listeners right now."""
        return sum(listener.connections() for listener in self._bound.values())

    async def prepare(self, config: PlainSidecarConfig) -> ListenerChange:
        """Bind what `config` adds and stop accepting on what it removes; raise `OSError` (with every
        change undone) when a new listener cannot bind."""
        keys = wanted(config)
        removed = [listener for key, listener in self._bound.items() if key not in keys]
        for listener in removed:
            await listener.stop_accepting()
        started: list[_Listener] = []
        try:
            for key in keys:
                if key not in self._bound:
                    started.append(await self._start(key))
        except OSError:
            for listener in started:
                await listener.drain(0)
            for listener in removed:
                await self._rebind(listener)
            raise
        return ListenerChange(self, removed, started)

    async def close(self) -> None:
        """Close every listener, waiting up to ``drain_seconds`` for requests in flight."""
        listeners = list(self._bound.values())
        self._bound.clear()
        await asyncio.gather(
            *(listener.drain(self.drain_seconds) for listener in listeners),
            *self._draining,
            return_exceptions=True,
        )

    async def _start(self, key: ListenerKey) -> _Listener:
        listener: _Listener
        if self.fast is not None:
            listener = _FastSocket(key, self.fast, lambda: self.handler(key), self.idle_timeout)
        else:
            from breakwater.proxy.full.socket import FullSocket

            listener = FullSocket(key, self.handler(key), self.idle_timeout, self.drain_seconds)
        await listener.start(key[3])
        return listener

    async def _rebind(self, listener: _Listener) -> None:
        port = listener.key[3]
        try:
            await listener.start(listener.port if port == 0 else port)
        except OSError as exc:
            config_log.error("could not restore listener %s after a failed reload: %s", listener.key, exc)
            del self._bound[listener.key]
            self._drain_later(listener)

    def _drain_later(self, listener: _Listener) -> None:
        task = asyncio.get_running_loop().create_task(listener.drain(self.drain_seconds))
        self._draining.add(task)
        task.add_done_callback(self._draining.discard)


@dataclass
class ListenerChange:
    """A prepared change of the listener set: nothing below can fail."""

    owner: ListenerSet
    removed: list[_Listener]
    started: list[_Listener]

    def commit(self) -> None:
        for listener in self.removed:
            del self.owner._bound[listener.key]
            self.owner._drain_later(listener)
        for listener in self.started:
            self.owner._bound[listener.key] = listener
