"""The answers the sidecar makes itself, decided once for both paths: rejections, fallbacks, errors.

Every such answer carries ``x-breakwater`` (`MARKER`): ``open`` (503 + Retry-After), ``bulkhead-full``
(503), ``timeout`` (504), ``connect-error`` / ``reset`` / ``bad-response`` (502), ``fallback-static`` /
``fallback-cached`` (with ``x-breakwater-reason``). Fallbacks answer rejections, a full bulkhead and
transport failures, never an upstream's own error response. The fast path renders an `Answer` to bytes,
the full path to an aiohttp response: the same status, headers and body either way.
"""

from __future__ import annotations

import json
import math
from typing import Final

from breakwater.proxy.cache import Headers, ResponseCache
from breakwater.proxy.upstream import LiveUpstream

__all__ = [
    "MARKER",
    "MARKER_REASON",
    "Answer",
    "fallback_applies",
    "fallback_or",
    "marked_error",
    "options_star",
    "plain",
    "retry_after_header",
]

MARKER: Final = "x-breakwater"
"""On every answer the proxy made itself: ``open``, ``bulkhead-full``, ``timeout``, ``fallback-cached``..."""
MARKER_REASON: Final = "x-breakwater-reason"
"""On fallback answers: why the fallback was served (``open``, ``timeout``, ``connect-error``...)."""

_MESSAGES: Final = {
    "open": "upstream circuit open",
    "bulkhead-full": "too many concurrent requests to upstream",
    "timeout": "upstream timed out",
    "connect-error": "cannot connect to upstream",
    "reset": "upstream connection broke",
}
_ALLOW: Final = "GET, HEAD, POST, PUT, PATCH, DELETE, OPTIONS"


class Answer:
    """A complete response: status, reason phrase, headers (without framing) and body."""

    __slots__ = ("body", "headers", "reason", "status")

    def __init__(self, status: int, headers: list[tuple[str, str]], body: bytes, reason: str = "") -> None:
        self.status = status
        self.headers = headers
        self.body = body
        self.reason = reason


def retry_after_header(seconds: float) -> str:
    if not math.isfinite(seconds):
        return "60"
    return str(max(1, math.ceil(seconds)))


def plain(status: int, marker: str, message: str) -> Answer:
    """A short text answer (the forward proxy's refusals, bad requests)."""
    return Answer(status, [(MARKER, marker), ("Content-Type", "text/plain; charset=utf-8")], message.encode())


def options_star() -> Answer:
    """``OPTIONS *`` asks about the server, not a resource: the sidecar answers it itself (it cannot be
    judged against an upstream, and an HTTP client library cannot send it)."""
    return Answer(200, [(MARKER, "options"), ("Allow", _ALLOW)], b"")


def fallback_applies(up: LiveUpstream, method: str) -> bool:
    """Whether `fallback_or` may answer with a fallback rather than `marked_error` (cheap to ask: a
    Cached fallback with nothing stored yet does not apply)."""
    if up.static_fallback is not None:
        return True
    cache = up.cache
    return cache is not None and len(cache) > 0 and method in ("GET", "HEAD")


def marked_error(name: str, reason: str, status: int, retry_after: float | None) -> Answer:
    """The answer without a fallback: `reason` as the marker, a short JSON body naming the upstream."""
    headers = [(MARKER, reason), ("Content-Type", "application/json")]
    fields: dict[str, object] = {"error": _MESSAGES.get(reason, reason), "upstream": name}
    if retry_after is not None:
        headers.append(("Retry-After", retry_after_header(retry_after)))
        fields["retryAfterSeconds"] = round(max(0.0, retry_after), 3) if math.isfinite(retry_after) else None
    return Answer(status, headers, json.dumps(fields, separators=(",", ":")).encode())


def fallback_or(
    up: LiveUpstream,
    reason: str,
    status: int,
    retry_after: float | None,
    *,
    method: str,
    path_qs: str,
    request_headers: Headers,
) -> Answer:
    """The fallback for this upstream if it has one that applies, else a plain marked error."""
    static = up.static_fallback
    if static is not None:
        up.stats.fallback_static += 1
        headers = [*static.headers, (MARKER, "fallback-static"), (MARKER_REASON, reason)]
        if retry_after is not None:
            headers.append(("Retry-After", retry_after_header(retry_after)))
        return Answer(static.status, headers, static.body)
    cache = up.cache
    if cache is not None and method in ("GET", "HEAD"):
        entry = cache.lookup(ResponseCache.key(path_qs, request_headers), request_headers)
        if entry is not None:
            up.stats.fallback_cached += 1
            headers = [*entry.headers, (MARKER, "fallback-cached"), (MARKER_REASON, reason)]
            headers.append(("Age", str(max(0, int(cache.now() - entry.stored_at)))))
            if retry_after is not None:
                headers.append(("Retry-After", retry_after_header(retry_after)))
            return Answer(entry.status, headers, entry.body, entry.reason)
    return marked_error(up.name, reason, status, retry_after)
