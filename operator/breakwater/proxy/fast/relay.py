"""The response half of a fast-path exchange: the upstream's answer parsed and relayed to the client.

`Relay` is the protocol object of each try's `httptools.HttpResponseParser`. What it writes is batched
per read from the upstream (`flush_to_client`: one write for a head and its body when both came
in one read). Framing towards the client is redone: a known length is kept, a chunked or
close-delimited body is re-chunked for an HTTP/1.1 client (an HTTP/1.0 client gets it close-delimited).
Interim 1xx answers are dropped; a 101 the proxy never asked for is an invalid answer (502), and so is
a status below 100 or a head that keeps growing past `MAX_RESPONSE_HEAD`. Answers to HEAD, and 204 and
304 answers, carry no body whatever their head says.

Whatever an upstream sends after a complete answer (a second answer to one request, stray bytes, a body
on a 204 or after a HEAD answer) is never relayed, and the connection it came on is not reused (RFC 9112
section 6.3); the answer before it stands.
"""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING, Final

from breakwater.proxy.cache import CacheFill
from breakwater.proxy.fast.wire import (
    KIND_CONNECTION,
    KIND_CONTENT_LENGTH,
    KIND_TRANSFER_ENCODING,
    RESPONSE_KINDS,
    HeaderLines,
    drop_nominated,
    status_line,
)

if TYPE_CHECKING:
    from breakwater.proxy.fast.pool import UpstreamConnection
    from breakwater.proxy.fast.request import RequestHead
    from breakwater.proxy.fast.server import ClientConnection

__all__ = ["MAX_RESPONSE_HEAD", "Relay"]

MAX_RESPONSE_HEAD: Final = 64 * 1024
"""A response head (interim answers included) still incomplete after this many bytes is refused (502).
Counted per read from the upstream, after the read: a head that arrives whole in one read is not."""

_NO_BODY_STATUSES: Final = frozenset({204, 304})
_CHUNKED_FRAMING: Final = b"Transfer-Encoding: chunked\r\n"
_CLOSE: Final = b"Connection: close\r\n"
_LAST_CHUNK: Final = b"0\r\n\r\n"
_JOIN_MAX: Final = 16 * 1024
"""Pieces for the client up to this many bytes in all are joined into one write (a copy this small
costs less than a vectored write; a large body is written as it came)."""


class _HeadResponseEnded(Exception):
    """Raised from the parser's callback to end a HEAD answer at its head (httptools cannot be told
    that a HEAD answer has no body). Only ever raised for HEAD."""


class _AnswerAfterAnswer(Exception):
    """Raised from the parser's callback when a second answer follows a complete one in the same read."""


class _InvalidStatus(Exception):
    """Raised from the parser's callback for a status below 100 (llhttp accepts any three digits)."""


class Relay:
    __slots__ = (
        "chunked",
        "chunked_out",
        "client",
        "close_delimited",
        "complete",
        "conn",
        "discarding",
        "fill",
        "got_response",
        "head_bytes",
        "head_ended",
        "head_out",
        "head_sent",
        "interim",
        "keep_alive",
        "length",
        "lines",
        "loop",
        "nominated",
        "out",
        "reason",
        "req",
        "response_lines",
        "retry_delay",
        "status",
        "timer_retry",
        "token_duration",
        "upgraded",
    )

    def __init__(self, client: ClientConnection) -> None:
        self.client = client
        self.loop = asyncio.get_running_loop()
        self.req: RequestHead | None = None
        self.conn: UpstreamConnection | None = None
        self.out: list[bytes] = []
        self.lines: list[bytes] = []
        self.response_lines = HeaderLines(self.lines)  # a view: `lines` is cleared, never replaced
        self.fill: CacheFill | None = None
        self.timer_retry: asyncio.TimerHandle | None = None
        self.retry_delay = 0.0
        self.token_duration = 0.0
        self.head_sent = False
        self.head_out = b""  # the head put in `out` (unwritten while it is `out[0]`)
        self.reset_response()

    def start(self, req: RequestHead) -> None:
        """A new request (each try's `reset_response` comes with its upstream connection)."""
        self.req = req
        self.head_sent = False
        self.fill = None

    def reset_response(self) -> None:
        self.status = 0
        self.reason = b""
        self.lines.clear()
        self.out.clear()
        self.length = -1
        self.chunked = False
        self.chunked_out = False
        self.close_delimited = False
        self.keep_alive = True
        self.interim = False
        self.upgraded = False
        self.complete = False
        self.discarding = False
        self.got_response = False
        self.head_ended = False
        self.nominated = False
        self.head_bytes = 0

    # -- hooks the exchange implements -------------------------------------------------------------

    def response_head(self, status: int) -> bool:
        raise NotImplementedError

    def response_done(self) -> None:
        raise NotImplementedError

    def retry_discarded(self, delay: float) -> None:
        raise NotImplementedError

    # -- httptools callbacks -----------------------------------------------------------------------

    def on_status(self, reason: bytes) -> None:
        self.reason += reason

    def on_header(self, name: bytes, value: bytes) -> None:
        kind = RESPONSE_KINDS[name]
        if not kind:
            self.lines.append(b"%b: %b\r\n" % (name, value))
        elif kind == KIND_CONTENT_LENGTH:
            self.length = int(value)
        elif kind == KIND_TRANSFER_ENCODING:
            # Chunked only if it is the last coding (as llhttp reads it): a response whose codings do
            # not end in chunked is delimited by the close (RFC 9112 section 6.3). The last line decides.
            self.chunked = value == b"chunked" or value.rpartition(b",")[2].strip().lower() == b"chunked"
        elif kind == KIND_CONNECTION:
            tokens = value.lower()
            if tokens not in (b"keep-alive", b"close"):
                self.nominated = True
                self.lines.append(b"Connection: %b\r\n" % value)  # dropped with what it lists below

    def on_headers_complete(self) -> None:
        if self.complete:  # a second answer to one request: never relayed (`answer_ended`)
            raise _AnswerAfterAnswer
        conn = self.conn
        assert conn is not None
        parser = conn.parser
        assert parser is not None
        status = parser.get_status_code()
        self.got_response = True
        if status < 200:
            if status == 101:
                self.upgraded = True
            elif status < 100:
                raise _InvalidStatus(status)
            else:
                self.interim = True
            return
        self.status = status
        self.keep_alive = parser.should_keep_alive()
        lines = self.lines
        if self.nominated:  # before the cache sees them: what Connection lists is never stored either
            drop_nominated(lines)
        req = self.req
        assert req is not None
        if not self.response_head(status):
            self.discarding = True
            if req.method == "HEAD":
                self.head_ended = True
                raise _HeadResponseEnded
            return
        head_only = req.method == "HEAD" or status in _NO_BODY_STATUSES
        # Joined, not written as its pieces: uvloop handles a dozen small buffers in a writev at a
        # higher cost (user and kernel time) than the join.
        parts = [status_line(status, self.reason), *lines]
        if self.length >= 0 and status != 204:
            parts.append(b"Content-Length: %d\r\n" % self.length)
        elif not head_only:
            self.close_delimited = not self.chunked
            if req.http11:
                self.chunked_out = True
                parts.append(_CHUNKED_FRAMING)
            else:
                self.client.close_after = True
        if self.client.close_after or not req.keep_alive:
            parts.append(_CLOSE)
        parts.append(b"\r\n")
        self.head_out = head = b"".join(parts)
        self.out.append(head)
        self.head_sent = True
        if req.method == "HEAD":
            self.head_ended = True
            raise _HeadResponseEnded

    def on_body(self, body: bytes) -> None:
        if self.discarding:
            return
        if self.fill is not None:
            self.fill.feed(body)
        if self.chunked_out:
            self.out.append(b"%x\r\n%b\r\n" % (len(body), body))
        else:
            self.out.append(body)

    def on_message_complete(self) -> None:
        if self.interim:  # a 100 or 103: the real answer follows on the same connection
            self.interim = False
            self.reason = b""
            self.lines.clear()
            return
        if self.chunked_out and not self.discarding:
            self.out.append(_LAST_CHUNK)
        self.complete = True

    # -- driven by the upstream connection ---------------------------------------------------------

    def parser_stopped(self, conn: UpstreamConnection, cause: BaseException | None, data: bytes) -> bool:
        """The parser stopped on an exception of a callback (`cause`) while reading `data`: False if
        it is none of the relay's own (a bug)."""
        if isinstance(cause, _InvalidStatus):
            self.upstream_malformed(conn, cause)
            return True
        if conn is not self.conn:
            return False
        if isinstance(cause, _AnswerAfterAnswer):
            self.answer_ended(conn)
            return True
        if not self.head_ended:
            return False
        # The HEAD answer is complete. The connection may carry the next one only if nothing came
        # after its head: `data` ends with the head, and its first CRLFCRLF is that head's end (a
        # read that begins with CR or LF might hold the end of an earlier read's CRLFCRLF).
        if data.find(b"\r\n\r\n") != len(data) - 4 or data[:1] in b"\r\n":
            self.keep_alive = False
        self.complete = True
        self.flush_to_client()
        return True

    def answer_ended(self, conn: UpstreamConnection) -> None:
        """More bytes followed a complete answer: they are dropped with the connection."""
        self.keep_alive = False
        self.flush_to_client()

    def head_growing(self, conn: UpstreamConnection, size: int) -> bool:
        """A read of `size` bytes left the final head still incomplete: False once it is too large."""
        self.head_bytes += size
        if self.head_bytes <= MAX_RESPONSE_HEAD:
            return True
        self.upstream_malformed(conn, ValueError(f"response head over {MAX_RESPONSE_HEAD} bytes"))
        return False

    def upstream_malformed(self, conn: UpstreamConnection, error: BaseException) -> None:
        raise NotImplementedError

    def response_ended_by_close(self) -> None:
        """A close-delimited body ended with the connection (the only way it can end)."""
        self.keep_alive = False
        if self.chunked_out:
            self.out.append(_LAST_CHUNK)
        self.complete = True
        self.flush_to_client()

    def flush_to_client(self) -> None:
        if self.upgraded:
            conn = self.conn
            assert conn is not None
            self.upgraded = False
            self.upstream_upgraded(conn)
            return
        out = self.out
        if out:
            transport = self.client.transport
            if transport is not None and not self.discarding:
                # One buffer is uvloop's fast path (a plain write, no iovec set up for a writev): a
                # head and a short body cost less joined than written as two pieces.
                if len(out) == 1:
                    transport.write(out[0])
                elif sum(map(len, out)) <= _JOIN_MAX:
                    transport.write(b"".join(out))
                else:
                    transport.writelines(out)
            out.clear()
        if self.complete:
            self._finish()

    def upstream_upgraded(self, conn: UpstreamConnection) -> None:
        raise NotImplementedError

    def discard_for_retry(self, delay: float) -> None:
        self.retry_delay = delay

    def _finish(self) -> None:
        self.complete = False
        req = self.req
        assert req is not None
        conn = self.conn
        self.conn = None
        if conn is not None:
            if self.keep_alive and req.complete and not conn.closed:
                conn.pool.give_back(conn)
            else:
                conn.close()
        if self.discarding:
            self.discarding = False
            self.retry_discarded(self.retry_delay)
            return
        if not req.complete:
            self.client.close_after = True  # the rest of the request body will never be read
        self.response_done()
