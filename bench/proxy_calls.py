"""Python-level calls per proxied request on the sidecar's fast path: its interpreter work, counted.

Not a test. Run ``.venv/bin/python bench/proxy_calls.py`` (a few seconds; writes
``bench/results/proxy-calls.md`` and ``.json``; ``--out -`` prints only). To count another source tree
(an older commit, say), put its ``operator/`` first on the path:
``git archive COMMIT operator | tar -x -C /tmp/old && PYTHONPATH=/tmp/old/operator .venv/bin/python
bench/proxy_calls.py --out -``. ``--build compiled --name proxy-calls-compiled`` counts the hot path as
the image runs it, compiled by mypyc: what Python is left then is what the compiled modules still call.

The sidecar runs in this process, on uvloop in the main thread, with every feature on (the policy of
`bench/proxy/peers.py`: breaker on a time window, Cached fallback, bulkhead with a line, retries with
a budget). A real upstream (a blocking socket server answering 1 KiB with nginx's head fields) and
the client (one keep-alive connection, one request at a time) run in other threads, on 127.0.0.1
only. cProfile watches the main thread alone while N requests go through, after a warm-up, and the
counts are divided by N: calls of Python functions, and calls of built-in (C) functions and methods
made from Python. Then a tracer counts the bytecode instructions the same thread executes per request
(what attribute lookups and other work inside the functions cost; fewer requests, tracing is slow).
Unlike CPU time, these counts do not depend on the machine's load (a read split in two by the kernel
would add a callback; with one request at a time on loopback that does not happen).
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import cProfile
import json
import pstats
import shlex
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from proxy.peers import add_build_argument, breakwater_config, build_path

REPO = Path(__file__).resolve().parents[1]
BODY = b"x" * 1024
ANSWER_HEAD = (
    b"HTTP/1.1 200 OK\r\nServer: nginx/1.22.1\r\nDate: Wed, 02 Dec 2026 04:00:00 GMT\r\n"
    b"Content-Type: application/octet-stream\r\nContent-Length: 1024\r\n"
    b"Last-Modified: Wed, 02 Dec 2026 03:00:00 GMT\r\nConnection: keep-alive\r\n"
    b'ETag: "692e5a30-400"\r\nAccept-Ranges: bytes\r\n\r\n'
)
POST_BODY = b'{"order": 1234, "items": [' + b'{"sku": "abc-123", "qty": 1},' * 7 + b"{}]}"


def _request(kind: str, port: int) -> bytes:
    head = b"%b /1k.bin HTTP/1.1\r\nHost: 127.0.0.1:%d\r\nUser-Agent: bench/1.0\r\nAccept: */*\r\n" % (
        b"GET" if kind == "GET" else b"POST",
        port,
    )
    if kind == "GET":
        return head + b"\r\n"
    return head + b"Content-Type: application/json\r\nContent-Length: %d\r\n\r\n%b" % (
        len(POST_BODY),
        POST_BODY,
    )


def _read_message(sock: socket.socket, buf: bytearray) -> None:
    """Consume one HTTP/1.1 message with a Content-Length (or none) from `sock` into nothing."""
    while b"\r\n\r\n" not in buf:
        chunk = sock.recv(65536)
        if not chunk:
            raise ConnectionError("peer closed")
        buf += chunk
    end = buf.index(b"\r\n\r\n") + 4
    length = 0
    for line in bytes(buf[:end]).split(b"\r\n"):
        if line.lower().startswith(b"content-length:"):
            length = int(line.split(b":", 1)[1])
    while len(buf) < end + length:
        chunk = sock.recv(65536)
        if not chunk:
            raise ConnectionError("peer closed")
        buf += chunk
    del buf[: end + length]


class Upstream:
    """A blocking HTTP/1.1 server on 127.0.0.1: every request answered 200 with 1 KiB, keep-alive."""

    def __init__(self) -> None:
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(64)
        self.port = int(self.sock.getsockname()[1])
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            threading.Thread(target=self._serve, args=(conn,), daemon=True).start()

    @staticmethod
    def _serve(conn: socket.socket) -> None:
        buf = bytearray()
        with conn:
            try:
                while True:
                    _read_message(conn, buf)
                    conn.sendall(ANSWER_HEAD + BODY)
            except (ConnectionError, OSError):
                return

    def close(self) -> None:
        self.sock.close()


def _client(port: int, request: bytes, count: int) -> None:
    with socket.create_connection(("127.0.0.1", port)) as sock:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        buf = bytearray()
        for _ in range(count):
            sock.sendall(request)
            _read_message(sock, buf)


async def _in_thread(fn: Any, *args: Any) -> None:
    """Run `fn` in a plain thread; resolve when it ends (one call into this loop, not one per step)."""
    loop = asyncio.get_running_loop()
    done: asyncio.Future[None] = loop.create_future()
    errors: list[BaseException] = []

    def run() -> None:
        try:
            fn(*args)
        except BaseException as exc:
            errors.append(exc)
        loop.call_soon_threadsafe(done.set_result, None)

    threading.Thread(target=run, daemon=True).start()
    await done
    if errors:
        raise errors[0]


class _OpcodeCounter:
    """A `sys.settrace` tracer that counts the bytecode instructions executed in new frames."""

    def __init__(self) -> None:
        self.by_code: collections.Counter[Any] = collections.Counter()

    @property
    def count(self) -> int:
        return sum(self.by_code.values())

    def on_call(self, frame: Any, event: str, arg: Any) -> Any:
        frame.f_trace_opcodes = True
        frame.f_trace_lines = False
        return self.on_event

    def on_event(self, frame: Any, event: str, arg: Any) -> Any:
        if event == "opcode":
            self.by_code[frame.f_code] += 1
        return self.on_event

    def top(self, per: int) -> list[tuple[str, float]]:
        return [
            (f"{_short(code.co_filename)}:{code.co_firstlineno} {code.co_name}", round(n / per, 1))
            for code, n in self.by_code.most_common()
            if n >= per
        ]


def _short(filename: str) -> str:
    return filename.split("/breakwater/", 1)[-1] if "/breakwater/" in filename else Path(filename).name


async def measure(kind: str, requests: int, warmup: int) -> dict[str, Any]:
    from breakwater.proxy import run_sidecar

    upstream = Upstream()
    work = Path(tempfile.mkdtemp(prefix="bw-proxy-calls-"))
    doc = breakwater_config(port=0, upstream=upstream.port, admin=0, forward=0)
    (work / "sidecar.json").write_text(json.dumps(doc))
    try:
        async with run_sidecar(work / "sidecar.json", poll_interval=3600.0) as sidecar:
            port = sidecar.listen_port("bench")
            request = _request(kind, port)
            await _in_thread(_client, port, request, warmup)
            profile = cProfile.Profile()
            started = time.perf_counter()
            profile.enable()
            await _in_thread(_client, port, request, requests)
            profile.disable()
            elapsed = time.perf_counter() - started
            traced = max(1, requests // 5)
            opcodes = _OpcodeCounter()
            sys.settrace(opcodes.on_call)
            await _in_thread(_client, port, request, traced)
            sys.settrace(None)
            served = sidecar.upstream("bench").stats.fast_path
    finally:
        upstream.close()
    if served != warmup + requests + traced:
        raise SystemExit(f"the fast path served {served} requests, expected {warmup + requests + traced}")
    stats = pstats.Stats(profile)
    python_calls = builtin_calls = 0
    by_function: list[tuple[int, str]] = []
    for (filename, line, name), (_, ncalls, *_rest) in stats.stats.items():  # type: ignore[attr-defined]
        if filename == "~":
            builtin_calls += ncalls
            label = name
        else:
            python_calls += ncalls
            label = f"{_short(filename)}:{line} {name}"
        by_function.append((ncalls, label))
    by_function.sort(reverse=True)
    return {
        "kind": kind,
        "requests": requests,
        "python_calls_per_request": round(python_calls / requests, 2),
        "builtin_calls_per_request": round(builtin_calls / requests, 2),
        "opcodes_per_request": round(opcodes.count / traced, 1),
        "seconds_under_profile": round(elapsed, 2),
        "top": [(label, round(n / requests, 2)) for n, label in by_function if n >= requests / 2],
        "top_opcodes": opcodes.top(traced),
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--requests", type=int, default=5000)
    parser.add_argument("--warmup", type=int, default=500)
    parser.add_argument("--out", default=str(REPO / "bench" / "results"), help="a directory, or - to print")
    add_build_argument(parser, default="interpreted", note="; compiled: the calls it still makes")
    parser.add_argument("--name", default="proxy-calls", help="result file stem")
    args = parser.parse_args()
    compiled = build_path(args.build)
    if compiled is not None:
        sys.path.insert(0, str(compiled))
    from breakwater.proxy.compiled import hot_path_build

    if hot_path_build() != args.build:
        print(f"the sidecar imported here is {hot_path_build()}, not {args.build}", file=sys.stderr)
        return 2
    import uvloop

    results = []
    for kind in ("GET", "POST"):
        with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
            result = runner.run(measure(kind, args.requests, args.warmup))
        results.append(result)
        print(
            f"{kind}: {result['python_calls_per_request']} Python calls/request, "
            f"{result['builtin_calls_per_request']} built-in calls/request, "
            f"{result['opcodes_per_request']} bytecode instructions/request",
            flush=True,
        )
    if args.out == "-":
        for result in results:
            print(f"\n{result['kind']} (per request):")
            for label, n in result["top"]:
                print(f"  {n:6.2f}  {label}")
            print(f"{result['kind']} (bytecode instructions per request, by function):")
            for label, n in result["top_opcodes"]:
                print(f"  {n:6.1f}  {label}")
        return 0
    import breakwater

    # The compiled build is made from this checkout; another tree put first on the path is its own.
    sources = REPO if args.build == "compiled" else Path(breakwater.__file__).parent
    commit = subprocess.run(
        ["git", "-C", str(sources), "rev-parse", "--short", "HEAD"],
        capture_output=True,
        text=True,
    ).stdout.strip()
    record = {
        "command": shlex.join([Path(sys.executable).name, *sys.argv]),
        "recorded": time.strftime("%Y-%m-%d %H:%M:%S %Z"),
        "commit": commit,
        "build": args.build,
        "results": results,
    }
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / f"{args.name}.json").write_text(json.dumps(record, indent=2) + "\n")
    (out / f"{args.name}.md").write_text(_markdown(record))
    print(f"wrote {out / f'{args.name}.md'}")
    return 0


def _markdown(record: dict[str, Any]) -> str:
    lines = [
        "# Python-level calls per proxied request on the fast path",
        "",
        f"Recorded {record['recorded']} by `{record['command']}` (sources at {record['commit'] or '?'}, "
        f"{record['build']}).",
        "",
        "The sidecar in-process with every feature on (`bench/proxy/peers.py`'s policy), one keep-alive",
        "client connection, one request at a time, a real upstream on 127.0.0.1 answering 1 KiB;",
        "cProfile (calls) and a `sys.settrace` opcode tracer (instructions) on the sidecar's thread only.",
        "Counts do not depend on the machine's load.",
        "",
        "| request | Python calls/request | built-in calls/request | bytecode instructions/request |",
        "| --- | ---: | ---: | ---: |",
    ]
    for r in record["results"]:
        lines.append(
            f"| {r['kind']} | {r['python_calls_per_request']} | {r['builtin_calls_per_request']} "
            f"| {r['opcodes_per_request']} |"
        )
    for r in record["results"]:
        lines += ["", f"{r['kind']}, the functions called at least every other request (calls/request):", ""]
        lines += [f"- {n} `{label}`" for label, n in r["top"]] or ["- none"]
        lines += ["", f"{r['kind']}, bytecode instructions per request by function:", ""]
        lines += [f"- {n} `{label}`" for label, n in r["top_opcodes"]] or ["- none"]
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    sys.exit(main())
