"""The sidecar's memory over a long run at a fixed rate: RSS every minute, growth from the first sample.

Not a test; run once by hand (``.venv/bin/python bench/proxy_soak.py --minutes 30``). All traffic stays
on 127.0.0.1: an nginx upstream (a static 1 KiB file), the sidecar with every feature on (the policy
of ``bench/proxy_bench.py``) pinned to core 0, and the open-loop generator of `bench/proxy/loadgen.py`
on core 1. Writes ``bench/results/proxy-soak.json`` and ``.md`` (``--name`` for another stem); the
sidecar runs its compiled build unless ``--build interpreted``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shlex
import shutil
import sys
import tempfile
import time
import urllib.request
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from proxy import peers as peer_defs
from proxy.loadgen import run_fixed_rate

REPO = Path(__file__).resolve().parents[1]
UPSTREAM_PORT, BW_PORT, BW_FORWARD_PORT, BW_ADMIN_PORT = 18180, 18184, 18185, 18190


def _loadavg() -> list[float]:
    return [float(x) for x in Path("/proc/loadavg").read_text().split()[:3]]


def _stats() -> dict[str, Any]:
    with urllib.request.urlopen(f"http://127.0.0.1:{BW_ADMIN_PORT}/stats", timeout=5) as resp:
        stats: dict[str, Any] = json.load(resp)
    return stats


async def _soak(minutes: int, rate: float, pid: int) -> list[dict[str, Any]]:
    samples: list[dict[str, Any]] = []
    for minute in range(minutes):
        result = await run_fixed_rate(
            "127.0.0.1", BW_PORT, peer_defs.BODY_PATH, rate=rate, duration=58.0, warmup=2.0
        )
        cpu, rss = peer_defs.process_tree_usage(pid)
        summary = result.summary()
        client_connections = (await asyncio.to_thread(_stats))["clientConnections"]
        samples.append(
            {
                "minute": minute + 1,
                "rss_mb": round(rss / 2**20, 2),
                "cpu_seconds": round(cpu, 2),
                "p99_ms": summary["p99_ms"],
                "errors": summary["errors"],
                "achieved_rate": summary["achieved_rate"],
                "client_connections": client_connections,
                "loadavg": _loadavg(),
            }
        )
        print(json.dumps(samples[-1]), flush=True)
    return samples


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--minutes", type=int, default=30)
    parser.add_argument("--rate", type=float, default=1000.0)
    parser.add_argument("--out", type=Path, default=REPO / "bench" / "results")
    peer_defs.add_build_argument(parser)
    parser.add_argument("--name", default="proxy-soak", help="result file stem")
    args = parser.parse_args()
    if shutil.which("nginx") is None:
        print("missing nginx: run bash bench/run_proxy.sh --soak", file=sys.stderr)
        return 2
    os.sched_setaffinity(0, {1})  # the generator shares core 1 with the upstream; the sidecar has core 0
    work = Path(tempfile.mkdtemp(prefix="bw-proxy-soak-"))
    work.chmod(0o755)
    upstream = peer_defs.start_upstream(work, UPSTREAM_PORT, cpu=1)
    compiled = peer_defs.build_path(args.build)
    sidecar = peer_defs.breakwater(
        work, BW_PORT, UPSTREAM_PORT, BW_ADMIN_PORT, BW_FORWARD_PORT, compiled=compiled
    )
    process = sidecar.start(work, cpu=0)
    assert process is not None
    started = time.strftime("%Y-%m-%d %H:%M:%S %Z")
    load_start = _loadavg()
    try:
        import uvloop

        with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
            samples = runner.run(_soak(args.minutes, args.rate, process.popen.pid))
        stats = _stats()["upstreams"]["bench"]
    finally:
        process.stop()
        upstream.stop()
        shutil.rmtree(work, ignore_errors=True)
    first, last = samples[0]["rss_mb"], samples[-1]["rss_mb"]
    doc = {
        "command": shlex.join([sys.executable.rsplit("/", 1)[-1], *sys.argv]),
        "started": started,
        "loadavg_start": load_start,
        "rate": args.rate,
        "minutes": args.minutes,
        "build": args.build,
        "samples": samples,
        "rss_first_mb": first,
        "rss_last_mb": last,
        "rss_max_mb": max(s["rss_mb"] for s in samples),
        "growth_percent": round(100 * (last - first) / first, 2),
        "sidecar_stats": {k: stats[k] for k in ("state", "requests", "paths")},
    }
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / f"{args.name}.json").write_text(json.dumps(doc, indent=2) + "\n")
    lines = [
        "# Sidecar soak: RSS at a fixed rate",
        "",
        f"Recorded {started} by `{doc['command']}`, by hand (it takes {args.minutes} minutes; not in CI).",
        f"Load average at the start {load_start}.",
        "",
        f"The sidecar ({args.build} hot path; every feature on, the policy of `bench/proxy_bench.py`, "
        f"pinned to core 0) at "
        f"{args.rate:.0f} rps open loop for {args.minutes} minutes; RSS sampled at the end of every minute.",
        "",
        f"RSS after minute 1: **{first} MB**, after minute {args.minutes}: **{last} MB** "
        f"(max {doc['rss_max_mb']} MB): growth **{doc['growth_percent']} %**.",
        "",
        "| minute | RSS MB | p99 ms | errors | achieved rps | client connections | load average |",
        "| ---: | ---: | ---: | ---: | ---: | ---: | --- |",
        *(
            f"| {s['minute']} | {s['rss_mb']} | {s['p99_ms']} | {s['errors']} | {s['achieved_rate']} | "
            f"{s.get('client_connections', '-')} | {s['loadavg']} |"
            for s in samples
        ),
        "",
        "Sidecar counters at the end: `" + json.dumps(doc["sidecar_stats"]) + "`",
        "",
    ]
    (args.out / f"{args.name}.md").write_text("\n".join(lines))
    print(f"wrote {args.out / (args.name + '.md')}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
