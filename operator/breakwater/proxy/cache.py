"""The Cached fallback: the last good response per safe request, bounded in entries, bytes and age.

What is stored: ``200`` answers to ``GET`` whose request and response do not say ``Cache-Control:
no-store`` and whose response does not say ``Vary: *``. Bodies are captured by a bounded tee while the
response streams to the client (`CacheFill`): an entry larger than the cache's byte budget is never
kept, and capturing stops as soon as it would be. ``Set-Cookie`` is never replayed.

The key is the request target (path and query) plus a digest of the request's ``Authorization`` and
``Cookie`` headers, every line of each: the sidecar is one pod's private cache, but that pod may serve
many users, and one user's answer must never be replayed to another. Headers named by the response's
``Vary`` must match too. A field sent on several lines counts whole everywhere (`combined`).
What is served: a ``GET`` or ``HEAD`` whose entry is younger than ``maxAgeSeconds``; entries are evicted
least-recently-used first when the entry or byte budget is exceeded, and lazily once too old.

Refreshing is throttled: while an entry is younger than `REFRESH_SECONDS` the next answers to the same
request are not captured again (at thousands of requests per second, re-copying every body would
cost more than the rest of the proxy; a fallback that is one second older does not matter).
"""

from __future__ import annotations

import hashlib
import time
from collections import OrderedDict
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Protocol

__all__ = ["CREDENTIALS_SEPARATOR", "CacheFill", "CachedResponse", "Headers", "ResponseCache", "combined"]

_UNSTORED_HEADERS = frozenset({"set-cookie", "age", "date", "content-length"})
REFRESH_SECONDS = 1.0
CREDENTIALS_SEPARATOR = "\n"  # no field value holds one: two lines never key like one line


class Headers(Protocol):
    """Read access to header fields by case-insensitive name (aiohttp's multidicts, the fast path's
    `HeaderLines`)."""

    def get(self, key: str, /) -> str | None: ...

    def items(self) -> Iterable[tuple[str, str]]: ...


@dataclass(frozen=True, slots=True)
class CachedResponse:
    status: int
    reason: str
    headers: tuple[tuple[str, str], ...]
    body: bytes
    stored_at: float
    vary: tuple[tuple[str, str], ...]
    size: int = 0

    @staticmethod
    def measure(headers: tuple[tuple[str, str], ...], body: bytes) -> int:
        return len(body) + sum(len(k) + len(v) for k, v in headers) + 64


def combined(headers: Headers, name: str, separator: str = ", ") -> str | None:
    """Every field of that name, in order, joined (RFC 9110 §5.3: a field sent on several lines is one
    list); None without any. Reading only the first line would key two users whose first Cookie line
    matches to one entry, and miss a Vary name on a second line."""
    wanted = name.lower()
    values = [value for key, value in headers.items() if key.lower() == wanted]
    return separator.join(values) if values else None


def _no_store(headers: Headers) -> bool:
    value = combined(headers, "Cache-Control")
    return value is not None and "no-store" in value.lower()


class ResponseCache:
    """An LRU of `CachedResponse` per request key; not thread-safe (one event loop)."""

    __slots__ = ("_bytes", "_clock", "_entries", "max_age", "max_bytes", "max_entries")

    def __init__(
        self,
        *,
        max_entries: int,
        max_bytes: int,
        max_age: float,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.max_entries = max_entries
        self.max_bytes = max_bytes
        self.max_age = max_age
        self._clock = clock
        self._entries: OrderedDict[str, CachedResponse] = OrderedDict()
        self._bytes = 0

    def __len__(self) -> int:
        return len(self._entries)

    @property
    def bytes(self) -> int:
        return self._bytes

    @staticmethod
    def key(path_qs: str, headers: Headers) -> str:
        auth = combined(headers, "Authorization", CREDENTIALS_SEPARATOR)
        cookie = combined(headers, "Cookie", CREDENTIALS_SEPARATOR)
        if auth is None and cookie is None:
            return path_qs
        return ResponseCache.credentials_key(path_qs, auth, cookie)

    @staticmethod
    def credentials_key(path_qs: str, auth: str | None, cookie: str | None) -> str:
        """`key` from the request's ``Authorization`` and ``Cookie`` values, each of every line of its
        name joined by `CREDENTIALS_SEPARATOR` (the fast path notes them while parsing)."""
        digest = hashlib.sha256(f"{auth}\0{cookie}".encode("utf-8", "surrogateescape")).hexdigest()[:32]
        return f"{path_qs}\0{digest}"

    @staticmethod
    def request_storable(method: str, headers: Headers) -> bool:
        return method == "GET" and not _no_store(headers)

    def begin(self, key: str, status: int, headers: Headers, length: int | None) -> CacheFill | None:
        """A tee for this response if it may be stored, else None (decided from the headers alone)."""
        if status != 200:
            return None
        current = self._entries.get(key)
        if current is not None and self._clock() - current.stored_at < REFRESH_SECONDS:
            return None
        if _no_store(headers):
            return None
        vary = combined(headers, "Vary") or ""
        if "*" in vary:
            return None
        if length is not None and length > self.max_bytes:
            return None
        return CacheFill(self, key, headers, [v.strip() for v in vary.split(",") if v.strip()])

    def lookup(self, key: str, request_headers: Headers) -> CachedResponse | None:
        entry = self._entries.get(key)
        if entry is None:
            return None
        if self._clock() - entry.stored_at > self.max_age:
            self._remove(key)
            return None
        for name, value in entry.vary:
            if (combined(request_headers, name) or "") != value:
                return None
        self._entries.move_to_end(key)
        return entry

    def store(self, key: str, entry: CachedResponse) -> None:
        size = entry.size
        if size > self.max_bytes:
            return
        self._remove(key)
        self._entries[key] = entry
        self._bytes += size
        self._evict()

    def resize(self, *, max_entries: int, max_bytes: int, max_age: float) -> None:
        self.max_entries = max_entries
        self.max_bytes = max_bytes
        self.max_age = max_age
        self._evict()

    def clear(self) -> None:
        self._entries.clear()
        self._bytes = 0

    def _remove(self, key: str) -> None:
        old = self._entries.pop(key, None)
        if old is not None:
            self._bytes -= old.size

    def _evict(self) -> None:
        while self._entries and (len(self._entries) > self.max_entries or self._bytes > self.max_bytes):
            _, old = self._entries.popitem(last=False)
            self._bytes -= old.size

    def now(self) -> float:
        return self._clock()


class CacheFill:
    """Collects one response body as it streams by, up to the cache's byte budget, then stores it."""

    __slots__ = ("_cache", "_chunks", "_headers", "_key", "_size", "_vary_names", "reason", "status")

    def __init__(self, cache: ResponseCache, key: str, headers: Headers, vary_names: list[str]) -> None:
        self._cache = cache
        self._key = key
        self._headers = tuple((k, v) for k, v in headers.items() if k.lower() not in _UNSTORED_HEADERS)
        self._vary_names = vary_names
        self._chunks: list[bytes] | None = []
        self._size = 0
        self.status = 200
        self.reason = "OK"

    @property
    def abandoned(self) -> bool:
        return self._chunks is None

    def feed(self, chunk: bytes) -> None:
        chunks = self._chunks
        if chunks is None:
            return
        self._size += len(chunk)
        if self._size > self._cache.max_bytes:
            self._chunks = None
            return
        chunks.append(chunk)

    def commit(self, request_headers: Headers) -> None:
        """The body arrived whole: store it."""
        if self._chunks is None:
            return
        vary = tuple((name, (combined(request_headers, name) or "")) for name in self._vary_names)
        body = b"".join(self._chunks)
        self._chunks = None
        self._cache.store(
            self._key,
            CachedResponse(
                status=self.status,
                reason=self.reason,
                headers=self._headers,
                body=body,
                stored_at=self._cache.now(),
                vary=vary,
                size=CachedResponse.measure(self._headers, body),
            ),
        )
