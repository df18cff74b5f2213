"""The peer baseline: a plain aiohttp reverse proxy, as one would write it without Breakwater.

One shared ClientSession (cleanup context), access log off, hop-by-hop headers dropped, both bodies
streamed. No breaker, no metrics, no fallbacks. Run: ``python plain_aiohttp.py --listen 18083
--upstream 127.0.0.1:18080 [--uvloop]``.
"""

from __future__ import annotations

import argparse
import asyncio
from collections.abc import AsyncIterator

import aiohttp
from aiohttp import web
from multidict import CIMultiDict
from yarl import URL

HOP = ("Connection", "Keep-Alive", "TE", "Trailer", "Transfer-Encoding", "Upgrade", "Proxy-Connection")
SESSION = web.AppKey("session", aiohttp.ClientSession)
ORIGIN = web.AppKey("origin", str)


def _filtered(headers: CIMultiDict[str] | aiohttp.typedefs.LooseHeaders) -> CIMultiDict[str]:
    out = CIMultiDict(headers)  # type: ignore[arg-type]
    for name in HOP:
        out.popall(name, None)
    return out


async def proxy(request: web.Request) -> web.StreamResponse:
    session = request.app[SESSION]
    url = URL(request.app[ORIGIN] + request.raw_path, encoded=True)
    data = request.content if request.body_exists else None
    async with session.request(
        request.method, url, headers=_filtered(request.headers), data=data, allow_redirects=False
    ) as upstream:
        resp = web.StreamResponse(
            status=upstream.status, reason=upstream.reason, headers=_filtered(upstream.headers)
        )
        await resp.prepare(request)
        async for chunk in upstream.content.iter_any():
            await resp.write(chunk)
        await resp.write_eof()
        return resp


def make_app(upstream: str) -> web.Application:
    app = web.Application()
    app[ORIGIN] = f"http://{upstream}"

    async def session_ctx(app: web.Application) -> AsyncIterator[None]:
        connector = aiohttp.TCPConnector(limit=0)
        async with aiohttp.ClientSession(connector=connector, auto_decompress=False) as session:
            app[SESSION] = session
            yield

    app.cleanup_ctx.append(session_ctx)
    app.router.add_route("*", "/{tail:.*}", proxy)
    return app


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--listen", type=int, required=True)
    parser.add_argument("--upstream", required=True, help="host:port")
    parser.add_argument("--uvloop", action="store_true")
    args = parser.parse_args()
    loop = None
    if args.uvloop:
        import uvloop

        loop = uvloop.new_event_loop()
        asyncio.set_event_loop(loop)
    web.run_app(
        make_app(args.upstream), host="127.0.0.1", port=args.listen, access_log=None, print=None, loop=loop
    )


if __name__ == "__main__":
    main()
