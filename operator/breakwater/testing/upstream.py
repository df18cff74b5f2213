"""A flaky HTTP upstream on loopback for tests and the demo: 500 while `failing` (or for a share of the
calls, `failure_ratio`), slow with `delay`."""

from __future__ import annotations

import asyncio
import random
import threading

from aiohttp import web

from breakwater.testing.controlplane import free_port


class FlakyUpstream:
    """An aiohttp server on 127.0.0.1 in its own thread; flip `failing` to make it answer 500."""

    def __init__(self, host: str = "127.0.0.1") -> None:
        self.host = host
        self.failing = False
        self.delay = 0.0  # seconds before each answer: a backend that is slow to recover
        self.failure_ratio = 0.0  # while not `failing`: this share of the answers are 500 (seeded)
        self._random = random.Random(15)
        self.port = 0
        self.requests = 0
        self._ready = threading.Event()
        self._thread = threading.Thread(target=self._run, name="flaky-upstream", daemon=True)
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stop: asyncio.Event | None = None

    async def _handle(self, request: web.Request) -> web.Response:
        self.requests += 1
        if self.delay:
            await asyncio.sleep(self.delay)
        if self.failing or (self.failure_ratio and self._random.random() < self.failure_ratio):
            return web.Response(
                status=500, text='{"error":"payments backend down"}', content_type="application/json"
            )
        return web.Response(text='{"paid":true}', content_type="application/json")

    async def _main(self) -> None:
        app = web.Application()
        app.router.add_route("*", "/{tail:.*}", self._handle)
        runner = web.AppRunner(app, access_log=None)
        await runner.setup()
        self.port = free_port()
        await web.TCPSite(runner, self.host, self.port).start()
        self._stop = asyncio.Event()
        self._ready.set()
        await self._stop.wait()
        await runner.cleanup()

    def _run(self) -> None:
        self._loop = asyncio.new_event_loop()
        self._loop.run_until_complete(self._main())
        self._loop.close()

    def start(self) -> FlakyUpstream:
        self._thread.start()
        if not self._ready.wait(10):
            raise RuntimeError("the flaky upstream did not start")
        return self

    def stop(self) -> None:
        if self._loop is not None and self._stop is not None:
            self._loop.call_soon_threadsafe(self._stop.set)
        self._thread.join(5)
