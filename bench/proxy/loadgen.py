"""An open-loop, fixed-rate HTTP/1.1 load generator (what wrk2 does; wrk2 is not packaged in Debian).

Request *i* is due at ``t0 + i / rate`` whether or not earlier ones were answered: it goes out on an
idle keep-alive connection, on a new one (up to ``max_connections``), or waits in a queue. Latency is
measured from the due time, not the send time, so a stalled server cannot hide its stall by slowing
the generator down (no coordinated omission). Responses must carry Content-Length or be chunked.

Runs on asyncio (uvloop when available); at 1,000 rps it needs a few percent of one core.
"""

from __future__ import annotations

import asyncio
import time
from collections import deque
from dataclasses import dataclass, field

__all__ = ["FixedRateResult", "run_fixed_rate"]


@dataclass
class FixedRateResult:
    rate: float
    duration: float
    sent: int = 0
    completed: int = 0
    errors: int = 0
    latencies_ns: list[int] = field(default_factory=list)
    connections: int = 0
    achieved_rate: float = 0.0

    def percentile_ms(self, p: float) -> float:
        data = sorted(self.latencies_ns)
        if not data:
            return float("nan")
        k = min(len(data) - 1, max(0, round(p / 100 * (len(data) - 1))))
        return data[k] / 1e6

    def summary(self) -> dict[str, float | int]:
        return {
            "rate": self.rate,
            "achieved_rate": round(self.achieved_rate, 1),
            "samples": len(self.latencies_ns),
            "errors": self.errors,
            "connections": self.connections,
            "p50_ms": round(self.percentile_ms(50), 3),
            "p90_ms": round(self.percentile_ms(90), 3),
            "p99_ms": round(self.percentile_ms(99), 3),
            "p999_ms": round(self.percentile_ms(99.9), 3),
            "max_ms": round(self.percentile_ms(100), 3),
        }


class _Connection(asyncio.Protocol):
    def __init__(self, gen: _Generator) -> None:
        self.gen = gen
        self.transport: asyncio.Transport | None = None
        self.buf = bytearray()
        self.due = 0
        self.busy = False
        self.ready = asyncio.get_running_loop().create_future()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        self.ready.set_result(None)

    def connection_lost(self, exc: Exception | None) -> None:
        self.transport = None
        if self.busy:
            self.busy = False
            self.gen.failed(self)
        self.gen.lost(self)

    def send(self, due: int) -> None:
        assert self.transport is not None
        self.due = due
        self.busy = True
        self.transport.write(self.gen.request)

    def data_received(self, data: bytes) -> None:
        buf = self.buf
        buf += data
        while self.busy:
            end = buf.find(b"\r\n\r\n")
            if end < 0:
                return
            head = bytes(buf[:end]).lower()
            start = end + 4
            cl_at = head.find(b"\ncontent-length:")
            if cl_at >= 0:
                line_end = head.find(b"\r", cl_at + 1)
                length = int(head[cl_at + 16 : line_end if line_end > 0 else len(head)])
                total = start + length
                if len(buf) < total:
                    return
            elif b"transfer-encoding: chunked" in head:
                term = buf.find(b"0\r\n\r\n", start)
                if term < 0:
                    return
                total = term + 5
            else:
                total = start
            ok = head.startswith(b"http/1.1 2") or head.startswith(b"http/1.0 2")
            del buf[:total]
            self.busy = False
            self.gen.done(self, ok)


class _Generator:
    def __init__(self, host: str, port: int, path: str, max_connections: int) -> None:
        self.host = host
        self.port = port
        self.request = (
            f"GET {path} HTTP/1.1\r\nHost: {host}:{port}\r\nUser-Agent: bw-loadgen\r\n\r\n".encode()
        )
        self.max_connections = max_connections
        self.idle: deque[_Connection] = deque()
        self.queue: deque[int] = deque()
        self.all: set[_Connection] = set()
        self.opening = 0
        self.record_from = 0
        self.result: FixedRateResult | None = None
        self.outstanding = 0

    async def open(self) -> None:
        self.opening += 1
        try:
            loop = asyncio.get_running_loop()
            _, conn = await loop.create_connection(lambda: _Connection(self), self.host, self.port)
            self.all.add(conn)
            if self.result is not None:
                self.result.connections = max(self.result.connections, len(self.all))
            self._give_work(conn)
        except OSError:
            if self.result is not None:
                self.result.errors += 1
            if self.queue:
                self.queue.popleft()
                self.outstanding -= 1
        finally:
            self.opening -= 1

    def _give_work(self, conn: _Connection) -> None:
        if self.queue and conn.transport is not None:
            conn.send(self.queue.popleft())
        elif conn.transport is not None:
            self.idle.append(conn)

    def dispatch(self, due: int) -> None:
        self.outstanding += 1
        while self.idle:
            conn = self.idle.pop()
            if conn.transport is not None:
                conn.send(due)
                return
        self.queue.append(due)
        if len(self.all) + self.opening < self.max_connections:
            asyncio.get_running_loop().create_task(self.open())

    def done(self, conn: _Connection, ok: bool) -> None:
        now = time.perf_counter_ns()
        self.outstanding -= 1
        result = self.result
        if result is not None and conn.due >= self.record_from:
            result.completed += 1
            if ok:
                result.latencies_ns.append(now - conn.due)
            else:
                result.errors += 1
        self._give_work(conn)

    def failed(self, conn: _Connection) -> None:
        self.outstanding -= 1
        if self.result is not None and conn.due >= self.record_from:
            self.result.errors += 1

    def lost(self, conn: _Connection) -> None:
        self.all.discard(conn)
        if self.queue and len(self.all) + self.opening < self.max_connections:
            asyncio.get_running_loop().create_task(self.open())


async def run_fixed_rate(
    host: str,
    port: int,
    path: str,
    *,
    rate: float,
    duration: float,
    warmup: float = 2.0,
    max_connections: int = 256,
    prewarm_connections: int = 8,
) -> FixedRateResult:
    """Send `rate` requests per second for `warmup + duration` seconds; record the last `duration`."""
    gen = _Generator(host, port, path, max_connections)
    result = FixedRateResult(rate=rate, duration=duration)
    gen.result = result
    for _ in range(prewarm_connections):
        await gen.open()
    interval = 1e9 / rate
    total = int(rate * (warmup + duration))
    t0 = time.perf_counter_ns() + 20_000_000
    gen.record_from = t0 + int(warmup * 1e9)
    i = 0
    while i < total:
        now = time.perf_counter_ns()
        while i < total and t0 + int(i * interval) <= now:
            due = t0 + int(i * interval)
            gen.dispatch(due)
            if due >= gen.record_from:
                result.sent += 1
            i += 1
        if i < total:
            await asyncio.sleep(max(0.0, (t0 + int(i * interval) - time.perf_counter_ns()) / 1e9))
    deadline = time.perf_counter_ns() + 10_000_000_000
    while gen.outstanding > 0 and time.perf_counter_ns() < deadline:  # noqa: ASYNC110
        await asyncio.sleep(0.01)
    end = t0 + int(total * interval)
    result.achieved_rate = result.completed / ((end - gen.record_from) / 1e9)
    result.errors += max(0, gen.outstanding)
    for conn in list(gen.all):
        if conn.transport is not None:
            conn.transport.close()
    return result
