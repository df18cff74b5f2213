"""The kubelet's probes, on their own port (`--health-listen`).

    GET /healthz   liveness: answered by the event loop itself, so it fails only when the loop is wedged
                   (a restart is the cure for nothing else)
    GET /readyz    readiness: 200 once this replica serves the webhook and the report endpoint and its
                   caches have listed, 503 with what is missing otherwise (and from SIGTERM on, so the
                   Service stops sending it admissions while it still answers them)

Leadership is not part of readiness: every replica answers admissions and reports.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass

from aiohttp import web

logger = logging.getLogger(__name__)

Check = Callable[[], list[str]]  # what is not ready yet; empty when ready


@dataclass
class ProbeServer:
    not_ready: Check
    _runner: web.AppRunner | None = None

    def app(self) -> web.Application:
        app = web.Application()
        app.router.add_get("/healthz", self._healthz)
        app.router.add_get("/readyz", self._readyz)
        return app

    async def start(self, *, host: str, port: int) -> None:
        self._runner = web.AppRunner(self.app(), access_log=None, handle_signals=False)
        await self._runner.setup()
        await web.TCPSite(self._runner, host, port, reuse_address=True).start()
        logger.info("probes listening on %s:%s (/healthz, /readyz)", host, port)

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    async def _healthz(self, _: web.Request) -> web.Response:
        return web.Response(text="ok\n")

    async def _readyz(self, _: web.Request) -> web.Response:
        missing = self.not_ready()
        if missing:
            return web.Response(status=503, text="not ready: " + "; ".join(missing) + "\n")
        return web.Response(text="ready\n")
