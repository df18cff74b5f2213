"""`python -m breakwater.testing.workload`: the apps of the real-node tests and demo, run in pods.

They ship in the Breakwater image (it has Python), so the node needs no other image:

- ``upstream --port P``: an HTTP backend; ``GET /control/fail`` makes it answer 500,
  ``/control/fail?path=/p`` only to requests for ``/p`` (repeatable: a backend failing for some of its
  clients, each calling its own path), ``/control/ok`` heals it, ``/control/slow?seconds=S`` delays its
  answers; every ``/control/...`` answer (``/control/state`` changes nothing) counts the requests it
  received by path. ``/healthz`` always answers 200 (its readiness probe: a failing backend stays
  behind its Service, as the story needs). Tests flip it through the API server's Service proxy, so
  nothing outside the node's namespace talks to a pod.
- ``client --url URL --port P``: calls URL every ``--interval`` seconds (the app behind the sidecar:
  URL is its ``BREAKWATER_<UPSTREAM>_URL``) and serves ``GET /stats`` (answers counted by status and
  by the sidecar's ``x-breakwater`` marker; ``?reset=1`` starts a new count).
- ``once --url URL``: one request, exit 0 on a 200 (a Job's app: its first call must succeed).
- ``load --url URL --rps N --seconds S``: N requests a second over keep-alive connections for S
  seconds, then prints what it achieved and sleeps (the benchmark reads the sidecar's memory meanwhile).

Standard library only: the point is a plain HTTP client and server, not another aiohttp.
"""

from __future__ import annotations

import argparse
import json
import sys
import threading
import time
import urllib.error
import urllib.request
from collections import Counter
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, urlparse


class _Quiet(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    # Headers and body leave in two writes: without TCP_NODELAY, Nagle and the peer's delayed ACK hold
    # every keep-alive answer ~40 ms (a backend capped near 200 requests/s).
    disable_nagle_algorithm = True

    def log_message(self, format: str, *args: object) -> None:
        pass

    def answer(self, status: int, body: dict[str, object]) -> None:
        data = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)


def serve_upstream(port: int) -> None:
    state = {"failing": False, "delay": 0.0}
    failing_paths: set[str] = set()
    received: Counter[str] = Counter()  # requests by path (the control and probe paths not counted)
    lock = threading.Lock()  # the server answers each connection in a thread of its own

    class Handler(_Quiet):
        def do_GET(self) -> None:
            url = urlparse(self.path)
            if url.path == "/healthz":  # the readiness probe: a failing backend stays an endpoint
                self.answer(200, {"ok": True})
                return
            if url.path.startswith("/control/"):
                verb, query = url.path.removeprefix("/control/"), parse_qs(url.query)
                with lock:
                    if verb == "fail" and "path" in query:
                        failing_paths.update(query["path"])
                    elif verb == "fail":
                        state["failing"] = True
                    elif verb == "ok":
                        state["failing"], state["delay"] = False, 0.0
                        failing_paths.clear()
                    elif verb == "slow":
                        state["delay"] = float(query.get("seconds", ["1"])[0])
                    body = {**state, "failingPaths": sorted(failing_paths), "requests": dict(received)}
                self.answer(200, body)
                return
            with lock:
                received[url.path] += 1
                delay, failing = float(state["delay"]), bool(state["failing"]) or url.path in failing_paths
            if delay:
                time.sleep(delay)
            if failing:
                self.answer(500, {"error": "payments backend down"})
            else:
                self.answer(200, {"paid": True})

        do_POST = do_GET  # noqa: N815 (http.server's naming)

    ThreadingHTTPServer(("0.0.0.0", port), Handler).serve_forever()


def call(url: str, timeout: float = 5.0) -> str:
    """One request; the outcome as `STATUS` or `STATUS MARKER` (the sidecar's own answers)."""
    try:
        with urllib.request.urlopen(url, timeout=timeout) as resp:
            resp.read()
            marker = resp.headers.get("x-breakwater")
            return f"{resp.status} {marker}" if marker else str(resp.status)
    except urllib.error.HTTPError as exc:
        marker = exc.headers.get("x-breakwater")
        return f"{exc.code} {marker}" if marker else str(exc.code)
    except OSError as exc:
        return f"error {type(exc).__name__}"


def run_client(url: str, port: int, interval: float) -> None:
    counts: Counter[str] = Counter()
    lock = threading.Lock()
    first = {"outcome": ""}

    def loop() -> None:
        while True:
            outcome = call(url)
            with lock:
                counts[outcome] += 1
                first["outcome"] = first["outcome"] or outcome
            time.sleep(interval)

    class Handler(_Quiet):
        def do_GET(self) -> None:
            with lock:
                body: dict[str, object] = {"counts": dict(counts), "first": first["outcome"]}
                if "reset=1" in self.path:
                    counts.clear()
            self.answer(200, body)

    threading.Thread(target=loop, daemon=True).start()
    ThreadingHTTPServer(("0.0.0.0", port), Handler).serve_forever()


def run_load(url: str, rps: int, seconds: float, connections: int) -> dict[str, object]:
    """Paced requests over persistent connections: each of `connections` threads sends its share."""
    import http.client

    target = urlparse(url)
    outcomes: Counter[str] = Counter()
    lock = threading.Lock()
    per_thread = rps / connections
    deadline = time.monotonic() + seconds

    def worker() -> None:
        conn = http.client.HTTPConnection(target.hostname or "127.0.0.1", target.port or 80, timeout=5)
        step, due = 1.0 / per_thread, time.monotonic()
        while time.monotonic() < deadline:
            try:
                conn.request("GET", target.path or "/")
                resp = conn.getresponse()
                resp.read()
                outcome = str(resp.status)
            except (OSError, http.client.HTTPException):
                conn.close()
                conn = http.client.HTTPConnection(
                    target.hostname or "127.0.0.1", target.port or 80, timeout=5
                )
                outcome = "error"
            with lock:
                outcomes[outcome] += 1
            due += step
            pause = due - time.monotonic()
            if pause > 0:
                time.sleep(pause)

    started = time.monotonic()
    threads = [threading.Thread(target=worker) for _ in range(connections)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    took = time.monotonic() - started
    total = sum(outcomes.values())
    return {
        "requests": total,
        "seconds": round(took, 1),
        "rps": round(total / took),
        "outcomes": dict(outcomes),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m breakwater.testing.workload")
    sub = parser.add_subparsers(dest="role", required=True)
    up = sub.add_parser("upstream")
    up.add_argument("--port", type=int, default=8080)
    client = sub.add_parser("client")
    client.add_argument("--url", required=True)
    client.add_argument("--port", type=int, default=8081)
    client.add_argument("--interval", type=float, default=0.1)
    once = sub.add_parser("once")
    once.add_argument("--url", required=True)
    load = sub.add_parser("load")
    load.add_argument("--url", required=True)
    load.add_argument("--rps", type=int, default=1000)
    load.add_argument("--seconds", type=float, default=30)
    load.add_argument("--connections", type=int, default=8)
    args = parser.parse_args(argv)
    if args.role == "upstream":
        serve_upstream(args.port)
    elif args.role == "client":
        run_client(args.url, args.port, args.interval)
    elif args.role == "load":
        print(json.dumps(run_load(args.url, args.rps, args.seconds, args.connections)), flush=True)
        time.sleep(3600)
    else:
        outcome = call(args.url)
        print(json.dumps({"first_request": outcome}), flush=True)
        return 0 if outcome == "200" else 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
