"""One parsed request of the fast path: what its upstream request is made of, and its body while it
waits its turn (`server.ClientConnection` parses it; `exchange.Exchange` answers it)."""

from __future__ import annotations

from breakwater.proxy.answers import Answer
from breakwater.proxy.upstream import LiveUpstream

__all__ = ["RequestHead"]


class RequestHead:
    """One parsed request: what the upstream request is made of, and its body while it waits."""

    __slots__ = (
        "authorization",
        "body",
        "cache_control",
        "chunked",
        "complete",
        "connection_field",
        "content_length",
        "cookie",
        "expect_continue",
        "host",
        "host_line",
        "http11",
        "keep_alive",
        "lines",
        "method",
        "method_bytes",
        "nominated",
        "problem",
        "raw_specials",
        "started",
        "target",
        "upgrade",
        "version",
    )

    def __init__(self, target: bytes) -> None:
        self.target = target
        self.method = ""
        self.method_bytes = b""
        self.version = "1.1"
        self.lines: list[bytes] = []
        self.raw_specials: list[bytes] = []
        self.body: list[bytes] = []
        self.host = b""
        self.host_line = b""  # the Host line to send, when not the upstream's own (forward proxy)
        self.content_length = -1
        self.chunked = False
        self.expect_continue = False
        self.keep_alive = True
        self.http11 = True
        self.complete = False
        self.started = False
        self.upgrade = False
        self.nominated = 0  # Connection fields listing more than close/keep-alive/upgrade (kept twice)
        self.connection_field = False  # a Connection or Proxy-Connection field came (see `version`)
        self.problem: Answer | None = None
        # What the Cached fallback reads, noted while parsing (every line of each name, joined as
        # `cache.combined` joins them): the credentials of the cache key, and Cache-Control.
        self.authorization: str | None = None
        self.cookie: str | None = None
        self.cache_control: bytes | None = None

    @property
    def no_store(self) -> bool:
        """The request says ``Cache-Control: no-store`` (`ResponseCache.request_storable`'s test)."""
        return self.cache_control is not None and b"no-store" in self.cache_control.lower()

    @property
    def path_qs(self) -> str:
        target = self.target.decode("latin-1")
        if target[:1] == "/" or target == "*":
            return target
        scheme_end = target.find("://")
        slash = target.find("/", scheme_end + 3) if scheme_end >= 0 else -1
        return target[slash:] if slash >= 0 else "/"

    def upstream_head(self, up: LiveUpstream) -> bytes:
        target = self.target
        if target[:1] != b"/" and target != b"*":
            target = self.path_qs.encode("latin-1")
        if self.content_length >= 0:
            framing = b"Content-Length: %d\r\n" % self.content_length
        elif self.chunked:
            framing = b"Transfer-Encoding: chunked\r\n"
        else:
            framing = b""
        return b"".join(
            (
                self.method_bytes,
                b" ",
                target,
                b" HTTP/1.1\r\n",
                self.host_line or up.host_line,
                *self.lines,
                framing,
                b"\r\n",
            )
        )

    def original_head(self) -> bytes:
        """The head as the client sent it (field order aside): what a handed-off request starts with."""
        line = b"%b %b HTTP/%b\r\n" % (self.method.encode(), self.target, self.version.encode())
        return b"".join((line, *self.lines, *self.raw_specials, b"\r\n"))
