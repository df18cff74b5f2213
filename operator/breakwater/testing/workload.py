"""`python -m breakwater.testing.workload`: the apps of the real-node tests and demo, run in pods.

They ship in the Breakwater image (it has Python), so the node needs no other image:

- ``upstream --port P``: an HTTP backend; ``GET /control/fail`` makes it answer 500, ``/control/ok``
  heals it, ``/control/slow?seconds=S`` delays its answers. Tests flip it through the API server's
  Service proxy, so nothing outside the node's namespace ever talks to a pod.
- ``client --url URL --port P``: calls URL every ``--interval`` seconds (the app behind the sidecar:
  URL is its ``BREAKWATER_<UPSTREAM>_URL``) and serves ``GET /stats`` (answers counted by status and
  by the sidecar's ``x-breakwater`` marker; ``?reset=1`` starts a new count).
- ``once --url URL``: one request, exit 0 on a 200 (a Job's app: its first call must succeed).

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
    state = {"failing": False, "delay": 0.0, "requests": 0}

    class Handler(_Quiet):
        def do_GET(self) -> None:
            url = urlparse(self.path)
            if url.path.startswith("/control/"):
                verb = url.path.removeprefix("/control/")
                if verb == "fail":
                    state["failing"] = True
                elif verb == "ok":
                    state["failing"], state["delay"] = False, 0.0
                elif verb == "slow":
                    state["delay"] = float(parse_qs(url.query).get("seconds", ["1"])[0])
                self.answer(200, {"failing": state["failing"], "delay": state["delay"]})
                return
            state["requests"] = int(state["requests"]) + 1
            if state["delay"]:
                time.sleep(float(state["delay"]))
            if state["failing"]:
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
    args = parser.parse_args(argv)
    if args.role == "upstream":
        serve_upstream(args.port)
    elif args.role == "client":
        run_client(args.url, args.port, args.interval)
    else:
        outcome = call(args.url)
        print(json.dumps({"first_request": outcome}), flush=True)
        return 0 if outcome == "200" else 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
