"""A listening socket served by the full path alone (the sidecar's fast path is off)."""

from __future__ import annotations

from aiohttp import web

from breakwater.proxy.full.path import Handler
from breakwater.proxy.full.server import FullServer

__all__ = ["FullSocket"]

ListenerKey = tuple[str, str, str, int]  # as `breakwater.proxy.listeners.ListenerKey` (a layer above)
_BACKLOG = 1024


class FullSocket:
    """A socket served by the full path alone (the fast path is off)."""

    def __init__(self, key: ListenerKey, handler: Handler, idle_timeout: float, drain_seconds: float) -> None:
        self.key = key
        self._server = FullServer(handler, idle_timeout=idle_timeout)
        self._drain_seconds = drain_seconds
        self._runner: web.ServerRunner | None = None
        self._site: web.TCPSite | None = None
        self._port = 0

    @property
    def port(self) -> int:
        return self._port

    def connections(self) -> int:
        return len(self._server.connections)

    async def start(self, port: int) -> None:
        if self._runner is None:
            self._runner = web.ServerRunner(self._server, shutdown_timeout=self._drain_seconds)
            await self._runner.setup()
        site = web.TCPSite(self._runner, self.key[2], port, backlog=_BACKLOG)
        await site.start()
        self._site = site
        self._port = site.port

    async def stop_accepting(self) -> None:
        if self._site is not None:
            await self._site.stop()
            self._site = None

    async def drain(self, seconds: float) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
