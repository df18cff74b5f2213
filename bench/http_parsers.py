"""The fast path's HTTP parser, chosen by measurement: httptools vs aiohttp's own C parser (both llhttp).

Not a test. Run ``.venv/bin/python bench/http_parsers.py`` (a few seconds, no network). Per parser:
microseconds to parse one typical proxied request head (10 header fields, keep-alive) including the
work its interface forces on the caller (httptools: a callback per field, kept as the fast path keeps
them; aiohttp: the message object it builds, a CIMultiDict and a yarl URL per request), the median of
rounds; and the RSS of a fresh interpreter after importing it. Writes ``bench/results/http-parsers.md``.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
REQUEST = (
    b"GET /api/v1/orders/12345?expand=items HTTP/1.1\r\n"
    b"Host: payments.shop.svc.cluster.local:8080\r\n"
    b"User-Agent: shop-frontend/2.3 (python-requests)\r\n"
    b"Accept: application/json\r\n"
    b"Accept-Encoding: gzip, deflate\r\n"
    b"Connection: keep-alive\r\n"
    b"X-Request-Id: 4b1c2d3e-5f60-4a7b-8c9d-0e1f2a3b4c5d\r\n"
    b"Traceparent: 00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01\r\n"
    b"Authorization: Bearer eyJhbGciOiJIUzI1NiJ9.e30.abc\r\n"
    b"Cookie: session=abcdef0123456789\r\n"
    b"Accept-Language: en-GB,en;q=0.9\r\n"
    b"\r\n"
)
BATCH = 20_000


def bench_httptools() -> float:
    import httptools

    class Sink:
        __slots__ = ("done", "lines", "url")

        def __init__(self) -> None:
            self.lines: list[bytes] = []
            self.url = b""
            self.done = 0

        def on_url(self, url: bytes) -> None:
            self.url = url

        def on_header(self, name: bytes, value: bytes) -> None:
            self.lines.append(b"%s: %s\r\n" % (name, value))

        def on_message_complete(self) -> None:
            self.done += 1
            self.lines.clear()

    sink = Sink()
    parser = httptools.HttpRequestParser(sink)
    feed = parser.feed_data
    t0 = time.perf_counter()
    for _ in range(BATCH):
        feed(REQUEST)
    elapsed = time.perf_counter() - t0
    assert sink.done == BATCH
    return elapsed / BATCH * 1e6


def bench_aiohttp() -> float:
    from aiohttp._http_parser import HttpRequestParser  # type: ignore[import-not-found]

    class Protocol:
        transport = None

    loop = asyncio.new_event_loop()
    parser = HttpRequestParser(Protocol(), loop, 2**16)
    feed = parser.feed_data
    done = 0
    t0 = time.perf_counter()
    for _ in range(BATCH):
        messages, _upgraded, _tail = feed(REQUEST)
        message = messages[0][0]
        _ = message.headers, message.url  # what a handler reads
        done += len(messages)
    elapsed = time.perf_counter() - t0
    loop.close()
    assert done == BATCH
    return elapsed / BATCH * 1e6


def rss_after(statement: str) -> float:
    probe = (
        f"{statement}\nimport re\nprint(re.search(r'VmRSS:\\s+(\\d+)', open('/proc/self/status').read())[1])"
    )
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True)
    return round(int(out.stdout.split()[-1]) / 1024, 1)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--out", type=Path, default=REPO / "bench" / "results")
    args = parser.parse_args()
    import aiohttp
    import httptools

    rows = []
    for name, fn, stmt in (
        (f"httptools {httptools.__version__} (llhttp)", bench_httptools, "import asyncio, httptools"),
        (f"aiohttp {aiohttp.__version__} C parser (llhttp)", bench_aiohttp, "import aiohttp._http_parser"),
    ):
        runs = [fn() for _ in range(args.rounds)]
        rows.append((name, statistics.median(runs), min(runs), max(runs), rss_after(stmt)))
    command = " ".join([sys.executable.rsplit("/", 1)[-1], *sys.argv])
    lines = [
        "# The fast path's HTTP parser",
        "",
        f"Recorded {time.strftime('%Y-%m-%d %H:%M:%S %Z')} by `{command}`, Python {sys.version.split()[0]}.",
        f"One {len(REQUEST)}-byte request head (10 fields), {BATCH:,} per round, {args.rounds} rounds; "
        "µs per request with what the parser's interface makes the caller do; RSS of a fresh "
        "interpreter after importing it.",
        "",
        "| parser | µs/request (median) | min | max | RSS after import MB |",
        "| --- | ---: | ---: | ---: | ---: |",
        *(f"| {n} | {m:.2f} | {lo:.2f} | {hi:.2f} | {rss} |" for n, m, lo, hi, rss in rows),
        "",
    ]
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "http-parsers.md").write_text("\n".join(lines))
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
