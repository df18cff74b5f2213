"""The full path of one sidecar, made on its first request: an aiohttp client session, the exchange
and the forward proxy, and a request handler per listener."""

from __future__ import annotations

from collections.abc import Awaitable, Callable

import aiohttp
from aiohttp import web

from breakwater.proxy.answers import options_star, plain
from breakwater.proxy.full.exchange import FullExchange
from breakwater.proxy.full.headers import to_response
from breakwater.proxy.full.http_proxy import FullForwardProxy
from breakwater.proxy.targets import ForwardRouter
from breakwater.proxy.upstream import RouteTable

__all__ = ["FullPath", "Handler"]

Handler = Callable[[web.BaseRequest], Awaitable[web.StreamResponse]]


class FullPath:
    def __init__(
        self, *, routes: Callable[[], RouteTable], router: ForwardRouter, pool_keepalive: float
    ) -> None:
        self._routes = routes
        connector = aiohttp.TCPConnector(
            limit=0, limit_per_host=0, keepalive_timeout=pool_keepalive, ttl_dns_cache=10
        )
        self.session = aiohttp.ClientSession(
            connector=connector,
            cookie_jar=aiohttp.DummyCookieJar(),
            auto_decompress=False,
            skip_auto_headers=("User-Agent", "Accept", "Accept-Encoding", "Content-Type"),
            timeout=aiohttp.ClientTimeout(total=None),
            trust_env=False,
        )
        self.exchange = FullExchange(self.session)
        self.forward_proxy = FullForwardProxy(router=router, exchange=self.exchange)

    def handler(self, kind: str, name: str) -> Handler:
        """What serves the requests of a listener: an upstream's (`name`) or the forward proxy."""
        if kind == "forward":
            return self.forward_proxy.handle

        async def handle(request: web.BaseRequest) -> web.StreamResponse:
            up = self._routes().by_name.get(name)
            if up is None:
                return to_response(
                    plain(503, "unknown-upstream", f"upstream {name} is no longer configured\n")
                )
            if request.raw_path == "*" and request.method == "OPTIONS":
                return to_response(options_star())
            return await self.exchange.forward(request, up)

        return handle

    async def close(self) -> None:
        await self.session.close()
