"""Header handling for a proxy, as RFC 9110 section 7.6.1 asks.

Hop-by-hop fields are dropped in both directions: ``Connection`` and every field it lists, plus
``Keep-Alive``, ``TE``, ``Trailer``, ``Transfer-Encoding``, ``Upgrade`` and the ``Proxy-*`` family
(``Proxy-Connection``, ``Proxy-Authorization``, ``Proxy-Authenticate``, ``Proxy-Authentication-Info``).
Framing (``Transfer-Encoding``) is redone by each hop; ``Content-Length`` is kept when the body is
passed through unchanged.
"""

from __future__ import annotations

from typing import Final

from multidict import CIMultiDict, CIMultiDictProxy

from breakwater.api.rules import HOP_BY_HOP

__all__ = [
    "HOP_BY_HOP",
    "MARKER",
    "MARKER_REASON",
    "end_to_end",
]

MARKER: Final = "x-breakwater"
"""On every answer the proxy made itself: ``open``, ``bulkhead-full``, ``timeout``, ``fallback-cached``..."""
MARKER_REASON: Final = "x-breakwater-reason"
"""On fallback answers: why the fallback was served (``open``, ``timeout``, ``connect-error``...)."""


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
