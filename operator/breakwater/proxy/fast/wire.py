"""HTTP/1.1 bytes for the fast path: which header fields a proxy keeps, and the heads it writes.

Header lines are kept as the rendered bytes ``Name: value\\r\\n`` they will be written as (one
allocation per field, no dict, no case-folding of values). Hop-by-hop fields (RFC 9110 section 7.6.1:
``Connection`` and what it lists, ``Keep-Alive``, ``TE``, ``Trailer``, ``Transfer-Encoding``,
``Upgrade``, ``Proxy-*``) are dropped in both directions; framing (``Content-Length`` or chunked) is
written by each hop for the body it sends.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from typing import Final

from breakwater.api.headers import HOP_BY_HOP
from breakwater.proxy.answers import Answer, marked_error

__all__ = [
    "CONTINUE",
    "HOP_BY_HOP_BYTES",
    "KIND_AUTHORIZATION",
    "KIND_CACHE_CONTROL",
    "KIND_CONNECTION",
    "KIND_CONTENT_LENGTH",
    "KIND_COOKIE",
    "KIND_END_TO_END",
    "KIND_EXPECT",
    "KIND_HOP",
    "KIND_HOST",
    "KIND_PROXY_CONNECTION",
    "KIND_TRANSFER_ENCODING",
    "REQUEST_KINDS",
    "RESPONSE_KINDS",
    "FieldKinds",
    "HeaderLines",
    "MarkedErrors",
    "drop_nominated",
    "render_answer",
    "status_line",
]

CONTINUE: Final = b"HTTP/1.1 100 Continue\r\n\r\n"
HOP_BY_HOP_BYTES: Final = frozenset(h.encode() for h in HOP_BY_HOP)

# What a header field is to the proxy (by its lower-cased name); absent: end-to-end, passed on as is.
KIND_END_TO_END: Final = 0
KIND_HOP: Final = 1
KIND_HOST: Final = 2
KIND_CONTENT_LENGTH: Final = 3
KIND_TRANSFER_ENCODING: Final = 4
KIND_CONNECTION: Final = 5
KIND_EXPECT: Final = 6
KIND_PROXY_CONNECTION: Final = 7  # hop-by-hop; noted because llhttp reads it as it reads Connection
# End-to-end request fields (passed on as is) that the Cached fallback reads: noted while parsing, so
# its tee never scans the header lines again.
KIND_AUTHORIZATION: Final = 8
KIND_COOKIE: Final = 9
KIND_CACHE_CONTROL: Final = 10
FIELD_KINDS: Final[dict[bytes, int]] = {
    **dict.fromkeys(HOP_BY_HOP_BYTES, KIND_HOP),
    b"host": KIND_HOST,
    b"content-length": KIND_CONTENT_LENGTH,
    b"transfer-encoding": KIND_TRANSFER_ENCODING,
    b"connection": KIND_CONNECTION,
    b"expect": KIND_EXPECT,
    b"proxy-connection": KIND_PROXY_CONNECTION,
    b"authorization": KIND_AUTHORIZATION,
    b"cookie": KIND_COOKIE,
    b"cache-control": KIND_CACHE_CONTROL,
}
RESPONSE_FIELD_KINDS: Final[dict[bytes, int]] = {
    **dict.fromkeys(HOP_BY_HOP_BYTES, KIND_HOP),
    b"content-length": KIND_CONTENT_LENGTH,
    b"transfer-encoding": KIND_TRANSFER_ENCODING,
    b"connection": KIND_CONNECTION,
}

_NAMES_LEARNT: Final = 4096
_NAME_LEARNT_MAX: Final = 64


class FieldKinds(dict[bytes, int]):
    """``kinds[name]``: the kind of a field by its name as received, `KIND_END_TO_END` if it has none.

    Learnt on first sight (the name lower-cased once, then remembered as it was spelled), so a field
    costs one dict lookup on the hot path, no case-folding. Bounded: past `_NAMES_LEARNT` spellings
    (a peer inventing names), or for a name longer than `_NAME_LEARNT_MAX`, a new one is folded each
    time and not remembered.
    """

    __slots__ = ("_by_lower",)

    def __init__(self, by_lower: dict[bytes, int]) -> None:
        super().__init__()
        self._by_lower = by_lower

    def __missing__(self, name: bytes) -> int:
        kind = self._by_lower.get(name.lower(), KIND_END_TO_END)
        if len(self) < _NAMES_LEARNT and len(name) <= _NAME_LEARNT_MAX:
            self[name] = kind
        return kind


REQUEST_KINDS: Final = FieldKinds(FIELD_KINDS)
RESPONSE_KINDS: Final = FieldKinds(RESPONSE_FIELD_KINDS)

_REASONS: Final = {
    200: "OK", 204: "No Content", 304: "Not Modified", 400: "Bad Request", 403: "Forbidden",
    404: "Not Found", 408: "Request Timeout", 413: "Content Too Large", 414: "URI Too Long",
    431: "Request Header Fields Too Large", 500: "Internal Server Error", 501: "Not Implemented",
    502: "Bad Gateway", 503: "Service Unavailable", 504: "Gateway Timeout", 505: "HTTP Version Not Supported",
    508: "Loop Detected",
}  # fmt: skip
_STATUS_LINES: dict[tuple[int, bytes], bytes] = {}


def status_line(status: int, reason: bytes) -> bytes:
    """``HTTP/1.1 <status> <reason>\\r\\n``, cached per (status, reason) (bounded)."""
    key = (status, reason)
    line = _STATUS_LINES.get(key)
    if line is None:
        if not reason:
            reason = _REASONS.get(status, "Unknown").encode()
        line = b"HTTP/1.1 %d %s\r\n" % (status, reason)
        if len(_STATUS_LINES) < 512:
            _STATUS_LINES[key] = line
    return line


class HeaderLines:
    """Read access to kept header lines by name (for the rare paths: cache keys, Vary, Cache-Control)."""

    __slots__ = ("_lines",)

    def __init__(self, lines: list[bytes]) -> None:
        self._lines = lines

    def get(self, name: str, /) -> str | None:
        wanted = name.lower().encode()
        for line in self._lines:
            colon = line.find(b":")
            if line[:colon].lower() == wanted:
                return line[colon + 1 :].strip().decode("latin-1")
        return None

    def items(self) -> Iterator[tuple[str, str]]:
        for line in self._lines:
            name, _, value = line.partition(b":")
            yield name.decode("latin-1"), value.strip().decode("latin-1")

    def __getitem__(self, name: str) -> str:
        value = self.get(name)
        if value is None:
            raise KeyError(name)
        return value

    def __contains__(self, name: object) -> bool:
        return isinstance(name, str) and self.get(name) is not None


def drop_nominated(lines: list[bytes]) -> None:
    """Remove the ``Connection`` lines kept in `lines` and every field they list (the rare case of a
    ``Connection`` header naming more than ``close`` / ``keep-alive``)."""
    names: set[bytes] = set()
    for line in lines:
        name, _, value = line.partition(b":")
        if name.lower() == b"connection":
            names.update(token.strip().lower() for token in value.split(b","))
    names.add(b"connection")
    lines[:] = [line for line in lines if line.partition(b":")[0].lower() not in names]


class MarkedErrors:
    """``render_answer(answers.marked_error(...))`` without building it: what a rejection costs while a
    breaker is open. The parts that do not change (status line, marker, body up to the figures) are
    rendered once per (upstream, reason, status); only Retry-After and the body's figure are formatted,
    and the last answer is kept: while open, the rejections of the same millisecond are the same bytes.
    """

    __slots__ = ("_last", "_last_key", "_parts")

    def __init__(self) -> None:
        self._parts: dict[tuple[str, str, int], tuple[bytes, bytes, bytes]] = {}
        self._last_key: tuple[str, str, int, float | None, int, bool, bool] | None = None
        self._last = b""

    def render(
        self, name: str, reason: str, status: int, retry_after: float | None, *, head_only: bool, close: bool
    ) -> bytes:
        # What the bytes depend on: the figure (to the millisecond) and Retry-After (whole seconds up).
        if retry_after is None:
            figure_value: float | None = None
            whole = 0
        elif math.isfinite(retry_after):
            figure_value = round(max(0.0, retry_after), 3)
            whole = max(1, math.ceil(retry_after))
        else:
            figure_value, whole = math.inf, 60
        last_key = (name, reason, status, figure_value, whole, head_only, close)
        if last_key == self._last_key:
            return self._last
        key = (name, reason, status)
        parts = self._parts.get(key)
        if parts is None:
            parts = self._prepare(name, reason, status)
            if len(self._parts) < 1024:
                self._parts[key] = parts
        head, body_plain, body_open = parts
        if figure_value is None:
            body = body_plain
            rest = b"Content-Length: %d\r\n" % len(body)
        else:
            figure = repr(figure_value).encode() if math.isfinite(figure_value) else b"null"
            body = body_open % figure
            rest = b"Retry-After: %d\r\nContent-Length: %d\r\n" % (whole, len(body))
        end = b"Connection: close\r\n\r\n" if close else b"\r\n"
        rendered = head + rest + end if head_only else head + rest + end + body
        self._last_key = last_key
        self._last = rendered
        return rendered

    @staticmethod
    def _prepare(name: str, reason: str, status: int) -> tuple[bytes, bytes, bytes]:
        plain = marked_error(name, reason, status, None)
        head = status_line(status, b"") + b"".join(
            f"{k}: {v}\r\n".encode("latin-1", "replace") for k, v in plain.headers
        )
        # The body with a figure: the plain body's closing brace replaced by the figure's field.
        body_open = plain.body[:-1].replace(b"%", b"%%") + b',"retryAfterSeconds":%b}'
        return head, plain.body, body_open


def render_answer(answer: Answer, *, head_only: bool = False, close: bool = False) -> bytes:
    """The bytes of a proxy-made answer (HEAD: the same head, no body)."""
    parts = [status_line(answer.status, answer.reason.encode("latin-1"))]
    for name, value in answer.headers:
        parts.append(f"{name}: {value}\r\n".encode("latin-1", "replace"))
    parts.append(b"Content-Length: %d\r\n" % len(answer.body))
    if close:
        parts.append(b"Connection: close\r\n")
    parts.append(b"\r\n")
    if not head_only:
        parts.append(answer.body)
    return b"".join(parts)
