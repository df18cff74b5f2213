"""The sidecar with its breaker open: rejections/s against the closed path's rate, memory over 1M rejections.

Not a test. Run by hand (``.venv/bin/python bench/proxy_open.py``; ``bash bench/run_proxy.sh`` installs
nginx and wrk). All traffic stays on 127.0.0.1. The sidecar (every feature on, the policy of
`bench/proxy/peers.py`) is pinned to core 0; nginx (one worker, a static 1 KiB file) and wrk share core 1.

- *closed*: the sidecar in front of nginx, wrk closed loop (1 thread, 64 connections);
- *open*: the same sidecar config in front of a port nothing listens on, tripped by a few requests
  (connect failures) and held open (``openSeconds`` 300, longer than the run); wrk the same way:
  every answer is the sidecar's own 503 rejection.

Rounds alternate closed and open (medians reported, and each round's own ratio: on a shared machine
the rounds' conditions differ more than the two halves of one round). Each run also records the
sidecar's CPU time, so the rates per CPU-second of the sidecar say what one request costs whatever the
machine's load. Then one open run long enough for at least 1M rejections, with the sidecar's RSS before
and after. The sidecar runs its hot path compiled, as the image does, unless ``--build interpreted``.
Writes ``bench/results/proxy-open.json`` / ``.md`` (``--name`` for another stem).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shlex
import shutil
import socket
import statistics
import sys
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from proxy import peers as peer_defs
from proxy_bench import run_wrk

REPO = Path(__file__).resolve().parents[1]
UPSTREAM_PORT, BW_PORT, BW_FORWARD_PORT, BW_ADMIN_PORT = 18280, 18284, 18285, 18290


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _stats() -> dict[str, Any]:
    with urllib.request.urlopen(f"http://127.0.0.1:{BW_ADMIN_PORT}/stats", timeout=5) as resp:
        stats: dict[str, Any] = json.load(resp)["upstreams"]["bench"]
    return stats


def _sidecar(work: Path, upstream: int, *, held_open: bool, compiled: Path | None) -> peer_defs.Process:
    config = peer_defs.breakwater_config(
        port=BW_PORT, upstream=upstream, admin=BW_ADMIN_PORT, forward=BW_FORWARD_PORT
    )
    if held_open:
        (up,) = config["upstreams"]  # type: ignore[misc]
        up["breaker"]["openSeconds"] = 300  # the longest the wire format allows by default
    conf = work / ("sidecar-open.json" if held_open else "sidecar.json")
    conf.write_text(json.dumps(config))
    argv = [peer_defs.PYTHON, "-m", "breakwater.cli", "proxy", "--config", str(conf), "--log-level", "ERROR"]
    env = {} if compiled is None else {"PYTHONPATH": str(compiled)}
    process = peer_defs.spawn("breakwater", argv, work, cpu=0, env=env, port=BW_PORT)
    if held_open:
        for _ in range(50):
            with contextlib.suppress(urllib.error.URLError, OSError):
                urllib.request.urlopen(f"http://127.0.0.1:{BW_PORT}{peer_defs.BODY_PATH}", timeout=5)
            if _stats()["state"] == "Open":
                break
        assert _stats()["state"] == "Open", _stats()
    return process


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--seconds", type=float, default=8.0, help="each wrk run of the rounds")
    parser.add_argument("--rejections", type=int, default=1_000_000, help="at least this many, long run")
    parser.add_argument("--out", type=Path, default=REPO / "bench" / "results")
    peer_defs.add_build_argument(parser)
    parser.add_argument("--name", default="proxy-open", help="result file stem")
    args = parser.parse_args()
    if shutil.which("nginx") is None or shutil.which("wrk") is None:
        print("missing nginx or wrk: run bash bench/run_proxy.sh first", file=sys.stderr)
        return 2
    os.sched_setaffinity(0, {1})
    work = Path(tempfile.mkdtemp(prefix="bw-proxy-open-"))
    work.chmod(0o755)
    dead = _free_port()
    compiled = peer_defs.build_path(args.build)
    doc: dict[str, Any] = {
        "command": shlex.join([sys.executable.rsplit("/", 1)[-1], *sys.argv]),
        "started": time.strftime("%Y-%m-%d %H:%M:%S %Z"),
        "loadavg_start": [float(x) for x in Path("/proc/loadavg").read_text().split()[:3]],
        "build": args.build,
        "rounds": [],
    }
    upstream = peer_defs.start_upstream(work, UPSTREAM_PORT, cpu=1)
    try:
        for _ in range(args.repeat):
            row: dict[str, Any] = {}
            for name, port, held_open in (("closed", UPSTREAM_PORT, False), ("open", dead, True)):
                process = _sidecar(work, port, held_open=held_open, compiled=compiled)
                try:
                    run_wrk(BW_PORT, 2)
                    cpu0 = peer_defs.process_tree_usage(process.popen.pid)[0]
                    row[name] = run_wrk(BW_PORT, args.seconds)
                    cpu = peer_defs.process_tree_usage(process.popen.pid)[0] - cpu0
                    answered = row[name]["rps"] * max(1, round(args.seconds))
                    row[name]["per_cpu_second"] = round(answered / cpu) if cpu > 0 else 0
                    row[name]["stats"] = {k: _stats()[k] for k in ("state", "requests", "paths")}
                finally:
                    process.stop()
                print(
                    f"{name}: {row[name]['rps']:.0f} rps, {row[name]['per_cpu_second']} per CPU-second",
                    flush=True,
                )
            doc["rounds"].append(row)
        closed = statistics.median(r["closed"]["rps"] for r in doc["rounds"])
        opened = statistics.median(r["open"]["rps"] for r in doc["rounds"])
        doc["closed_rps"], doc["open_rps"], doc["ratio"] = closed, opened, round(opened / closed, 2)
        doc["round_ratios"] = [round(r["open"]["rps"] / r["closed"]["rps"], 2) for r in doc["rounds"]]
        doc["round_cpu_ratios"] = [
            round(r["open"]["per_cpu_second"] / max(1, r["closed"]["per_cpu_second"]), 2)
            for r in doc["rounds"]
        ]

        process = _sidecar(work, dead, held_open=True, compiled=compiled)
        try:
            run_wrk(BW_PORT, 2)
            rss0 = peer_defs.process_tree_usage(process.popen.pid)[1]
            rejected0 = _stats()["requests"]["rejected"]
            seconds = 1.15 * args.rejections / max(opened, 1.0) + 1
            samples = []
            while _stats()["requests"]["rejected"] - rejected0 < args.rejections:
                run_wrk(BW_PORT, min(seconds, 20))
                samples.append(
                    {
                        "rejected": _stats()["requests"]["rejected"] - rejected0,
                        "rss_mb": round(peer_defs.process_tree_usage(process.popen.pid)[1] / 2**20, 2),
                    }
                )
                print(json.dumps(samples[-1]), flush=True)
            rss1 = peer_defs.process_tree_usage(process.popen.pid)[1]
            doc["long"] = {
                "rejections": samples[-1]["rejected"],
                "rss_before_mb": round(rss0 / 2**20, 2),
                "rss_after_mb": round(rss1 / 2**20, 2),
                "growth_percent": round(100 * (rss1 - rss0) / rss0, 2),
                "samples": samples,
                "stats": {k: _stats()[k] for k in ("state", "requests", "paths")},
            }
        finally:
            process.stop()
    finally:
        upstream.stop()
        shutil.rmtree(work, ignore_errors=True)

    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / f"{args.name}.json").write_text(json.dumps(doc, indent=2) + "\n")
    long = doc["long"]
    lines = [
        "# Sidecar with its breaker open",
        "",
        f"Recorded {doc['started']} by `{doc['command']}`; load average at the start {doc['loadavg_start']}.",
        "",
        f"The sidecar ({args.build} hot path; every feature on, the policy of `bench/proxy/peers.py`)",
        "pinned to core 0; nginx and wrk (1 thread, 64 connections, closed loop) on core 1. *Closed*:",
        "in front of nginx (1 KiB answers).",
        "*Open*: in front of a dead port, tripped, held open; every answer is the sidecar's 503.",
        "",
        f"Median over {args.repeat} interleaved rounds: closed **{closed:,.0f} rps**, open "
        f"**{opened:,.0f} rejections/s**: **{doc['ratio']}x** the closed path.",
        "",
        "Per round (closed, open rps; open/closed): "
        + "; ".join(
            f"{r['closed']['rps']:.0f}, {r['open']['rps']:.0f}; {x}x"
            for r, x in zip(doc["rounds"], doc["round_ratios"], strict=True)
        )
        + ".",
        "",
        "Per CPU-second of the sidecar (closed requests, open rejections; open/closed): "
        + "; ".join(
            f"{r['closed']['per_cpu_second']:,}, {r['open']['per_cpu_second']:,}; {x}x"
            for r, x in zip(doc["rounds"], doc["round_cpu_ratios"], strict=True)
        )
        + ".",
        "",
        f"Memory over {long['rejections']:,} rejections: RSS {long['rss_before_mb']} MB before, "
        f"{long['rss_after_mb']} MB after (**{long['growth_percent']} %**); samples "
        + ", ".join(f"{s['rejected']:,}: {s['rss_mb']} MB" for s in long["samples"])
        + ".",
        "",
        "Sidecar counters after the long run: `" + json.dumps(long["stats"]) + "`",
        "",
    ]
    (args.out / f"{args.name}.md").write_text("\n".join(lines))
    print(f"wrote {args.out / f'{args.name}.md'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
