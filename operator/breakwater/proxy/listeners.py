"""The data-plane listeners of a sidecar: one per upstream `listenPort`, and the forward proxy.

A reload changes the set in two phases, `ListenerSet.prepare` then `Change.commit`: listeners that stay
are never touched; new ones are bound first, so a port that cannot be bound rolls the whole reload
back (`prepare` raises with removed listeners bound again); removed ones stop accepting at once and
drain in the background once committed.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

from aiohttp import web

from breakwater.api.sidecar import SidecarConfig
from breakwater.proxy.logs import CONFIG_CHANNEL

__all__ = ["Change", "ListenerKey", "ListenerSet"]

config_log = logging.getLogger(CONFIG_CHANNEL)

ListenerKey = tuple[str, str, str, int]  # (kind: "upstream" | "forward", upstream name or "", address, port)
Handler = Callable[[web.BaseRequest], Awaitable[web.StreamResponse]]


@dataclass(slots=True)
class _Listener:
    key: ListenerKey
    runner: web.ServerRunner
    site: web.TCPSite

    @property
    def port(self) -> int:
        return self.site.port


def wanted(config: SidecarConfig) -> list[ListenerKey]:
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
    """The bound listeners; `handler(key)` serves a listener's requests."""

    handler: Callable[[ListenerKey], Handler]
    idle_timeout: float
    drain_seconds: float
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
        return sum(
            len(listener.runner.server.connections)
            for listener in self._bound.values()
            if listener.runner.server is not None
        )

    async def prepare(self, config: SidecarConfig) -> Change:
        """Bind what `config` adds and stop accepting on what it removes; raise `OSError` (with every
        change undone) when a new listener cannot bind."""
        keys = wanted(config)
        removed = [listener for key, listener in self._bound.items() if key not in keys]
        for listener in removed:
            await listener.site.stop()
        started: list[_Listener] = []
        try:
            for key in keys:
                if key not in self._bound:
                    started.append(await self._start(key))
        except OSError:
            for listener in started:
                await listener.runner.cleanup()
            for listener in removed:
                await self._rebind(listener)
            raise
        return Change(self, removed, started)

    async def close(self) -> None:
        """Close every listener, waiting up to ``drain_seconds`` for requests in flight."""
        listeners = list(self._bound.values())
        self._bound.clear()
        await asyncio.gather(
            *(listener.runner.cleanup() for listener in listeners), *self._draining, return_exceptions=True
        )

    async def _start(self, key: ListenerKey) -> _Listener:
        _, _, address, port = key
        server = web.Server(
            self.handler(key),
            handler_cancellation=False,
            access_log=None,
            keepalive_timeout=self.idle_timeout,
            max_line_size=8190,
            max_field_size=8190,
            max_headers=128,
            lingering_time=2.0,
        )
        runner = web.ServerRunner(server, shutdown_timeout=self.drain_seconds)
        await runner.setup()
        site = web.TCPSite(runner, address, port, backlog=1024)
        try:
            await site.start()
        except BaseException:
            await runner.cleanup()
            raise
        return _Listener(key=key, runner=runner, site=site)

    async def _rebind(self, listener: _Listener) -> None:
        _, _, address, port = listener.key
        site = web.TCPSite(listener.runner, address, listener.port if port == 0 else port, backlog=1024)
        try:
            await site.start()
            listener.site = site
        except OSError as exc:
            config_log.error("could not restore listener %s after a failed reload: %s", listener.key, exc)
            del self._bound[listener.key]
            self._drain_later(listener)

    def _drain_later(self, listener: _Listener) -> None:
        task = asyncio.get_running_loop().create_task(listener.runner.cleanup())
        self._draining.add(task)
        task.add_done_callback(self._draining.discard)


@dataclass
class Change:
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
