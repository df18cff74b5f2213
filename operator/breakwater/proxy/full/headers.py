"""Header handling for the full path (aiohttp's multidicts), as RFC 9110 section 7.6.1 asks.

Hop-by-hop fields are dropped in both directions: ``Connection`` and every field it lists, plus
``Keep-Alive``, ``TE``, ``Trailer``, ``Transfer-Encoding``, ``Upgrade`` and the ``Proxy-*`` family
(``Proxy-Connection``, ``Proxy-Authorization``, ``Proxy-Authenticate``, ``Proxy-Authentication-Info``).
Framing (``Transfer-Encoding``) is redone by each hop; ``Content-Length`` is kept when the body is
passed through unchanged.
"""

from __future__ import annotations

from aiohttp import web
from multidict import CIMultiDict, CIMultiDictProxy

from breakwater.api.headers import HOP_BY_HOP
from breakwater.proxy.answers import Answer

__all__ = ["HOP_BY_HOP", "end_to_end", "to_response"]


def end_to_end(
    headers: CIMultiDictProxy[str] | CIMultiDict[str], *, drop_length: bool = False
) -> CIMultiDict[str]:
    """A copy of `headers` without the hop-by-hop fields (and without Content-Length if asked)."""
    out = CIMultiDict(headers)
    connection = out.get("Connection")
    if connection is not None:
        for value in out.getall("Connection"):
            for token in value.split(","):
                token = token.strip()
                if token:
                    out.popall(token, None)
    for name in HOP_BY_HOP:
        if name in out:
            del out[name]
    if drop_length and "Content-Length" in out:
        del out["Content-Length"]
    return out


def to_response(answer: Answer) -> web.Response:
    """An answer the proxy made itself, as an aiohttp response."""
    return web.Response(
        status=answer.status,
        reason=answer.reason or None,
        headers=CIMultiDict(answer.headers),
        body=answer.body,
    )
