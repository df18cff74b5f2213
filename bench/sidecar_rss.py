"""The sidecar's RSS at rest and under 1,000 rps, for one or more source trees, in interleaved rounds.

Not a test. Run ``.venv/bin/python bench/sidecar_rss.py`` (about 2 minutes with the defaults; nginx
needed). All traffic stays on 127.0.0.1: an nginx upstream (a static 1 KiB file), the sidecar with
every feature on (the policy of ``bench/proxy/peers.py``) pinned to core 0, and the open-loop
generator of `bench/proxy/loadgen.py` on core 1 (at most ``--connections`` connections, so a stalled
machine does not turn into a pile of connections). Each variant is a checkout (``--tree NAME=DIR``,
default: this one), run with ``DIR/.venv/bin/python`` (or this interpreter) and ``DIR/operator`` first
on PYTHONPATH, plus extra environment (``--env NAME=VAR=VALUE``, NAME may be ``TREE+what``). VmRSS is
read from /proc one second after the start (idle) and at the end of each run. Writes
``bench/results/sidecar-rss.json`` and ``.md``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shlex
import shutil
import signal
import statistics
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
UPSTREAM_PORT, BW_PORT, BW_FORWARD_PORT, BW_ADMIN_PORT = 18480, 18484, 18485, 18490


def _rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return round(int(line.split()[1]) / 1024, 2)
    raise RuntimeError("no VmRSS")


def _client_connections() -> int:
    with urllib.request.urlopen(f"http://127.0.0.1:{BW_ADMIN_PORT}/stats", timeout=5) as resp:
        return int(json.load(resp)["clientConnections"])


def _run_once(work: Path, tree: Path, env: dict[str, str], args: argparse.Namespace) -> dict[str, Any]:
    peer = peer_defs.breakwater(work, BW_PORT, UPSTREAM_PORT, BW_ADMIN_PORT, BW_FORWARD_PORT)
    venv_python = tree / ".venv" / "bin" / "python"
    assert peer.argv is not None
    peer.argv[0] = str(venv_python) if venv_python.exists() else sys.executable
    peer.env = {**env, "PYTHONPATH": str(tree / "operator")}
    process = peer.start(work, cpu=0)
    assert process is not None
    try:
        time.sleep(1.0)
        idle = _rss_mb(process.popen.pid)
        samples: list[float] = []

        async def load() -> dict[str, Any]:
            result = await run_fixed_rate(
                "127.0.0.1",
                BW_PORT,
                peer_defs.BODY_PATH,
                rate=args.rate,
                duration=args.seconds,
                warmup=2.0,
                max_connections=args.connections,
            )
            return dict(result.summary())

        import uvloop

        with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
            summary = runner.run(load())
        samples.append(_rss_mb(process.popen.pid))
        connections = _client_connections()
    finally:
        process.stop()
    return {
        "idle_mb": idle,
        "loaded_mb": samples[-1],
        "p99_ms": summary["p99_ms"],
        "errors": summary["errors"],
        "achieved_rate": summary["achieved_rate"],
        "client_connections": connections,
        "loadavg": [float(x) for x in Path("/proc/loadavg").read_text().split()[:3]],
    }


def _variants(args: argparse.Namespace) -> dict[str, tuple[Path, dict[str, str]]]:
    trees = dict(t.split("=", 1) for t in args.tree) if args.tree else {"this checkout": str(REPO)}
    variants = {name: (Path(path), {}) for name, path in trees.items()}
    for spec in args.env:
        name, var, value = spec.split("=", 2)
        base = variants.get(name.split("+")[0], next(iter(variants.values())))
        variants[name] = (base[0], {**base[1], var: value})
    return variants


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--tree", action="append", default=[], metavar="NAME=DIR")
    parser.add_argument("--env", action="append", default=[], metavar="NAME=VAR=VALUE")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--seconds", type=float, default=30.0)
    parser.add_argument("--rate", type=float, default=1000.0)
    parser.add_argument("--connections", type=int, default=64)
    parser.add_argument("--out", type=Path, default=REPO / "bench" / "results")
    args = parser.parse_args()
    if shutil.which("nginx") is None:
        print("missing nginx: run bash bench/run_proxy.sh first (it installs the peers)", file=sys.stderr)
        return 2
    os.sched_setaffinity(0, {1})
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(1))  # so the children are stopped
    variants = _variants(args)
    work = Path(tempfile.mkdtemp(prefix="bw-sidecar-rss-"))
    work.chmod(0o755)
    upstream = peer_defs.start_upstream(work, UPSTREAM_PORT, cpu=1)
    started = time.strftime("%Y-%m-%d %H:%M:%S %Z")
    runs: dict[str, list[dict[str, Any]]] = {name: [] for name in variants}
    try:
        for round_ in range(args.rounds):
            for name, (tree, env) in variants.items():
                run = _run_once(work, tree, env, args)
                runs[name].append(run)
                print(json.dumps({"round": round_ + 1, "variant": name, **run}), flush=True)
    finally:
        upstream.stop()
        shutil.rmtree(work, ignore_errors=True)
    summary = {
        name: {
            "idle_mb": statistics.median(r["idle_mb"] for r in rs),
            "loaded_mb": statistics.median(r["loaded_mb"] for r in rs),
            "loaded_range_mb": [min(r["loaded_mb"] for r in rs), max(r["loaded_mb"] for r in rs)],
        }
        for name, rs in runs.items()
    }
    doc = {
        "command": shlex.join([sys.executable.rsplit("/", 1)[-1], *sys.argv]),
        "started": started,
        "variants": {name: {"tree": str(t), "env": e} for name, (t, e) in variants.items()},
        "runs": runs,
        "summary": summary,
    }
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "sidecar-rss.json").write_text(json.dumps(doc, indent=2) + "\n")
    lines = [
        "# Sidecar RSS at rest and at 1,000 rps",
        "",
        f"Recorded {started} by `{doc['command']}`. The sidecar (every feature on, the policy of",
        "`bench/proxy/peers.py`) on core 0, nginx and the open-loop generator on core 1; VmRSS one second",
        f"after the start (idle) and after {args.seconds:.0f} s at {args.rate:.0f} rps (loaded), at most",
        f"{args.connections} client connections. {args.rounds} interleaved rounds; medians, and the range.",
        "",
        "| variant | idle MB | loaded MB (median) | loaded MB (min-max) |",
        "| --- | ---: | ---: | --- |",
        *(
            f"| {name} | {s['idle_mb']} | {s['loaded_mb']} | "
            f"{s['loaded_range_mb'][0]}-{s['loaded_range_mb'][1]} |"
            for name, s in summary.items()
        ),
        "",
        "| round | variant | idle MB | loaded MB | p99 ms | errors | achieved rps | client connections "
        "| load average |",
        "| ---: | --- | ---: | ---: | ---: | ---: | ---: | ---: | --- |",
        *(
            f"| {i + 1} | {name} | {r['idle_mb']} | {r['loaded_mb']} | {r['p99_ms']} | {r['errors']} | "
            f"{r['achieved_rate']} | {r['client_connections']} | {r['loadavg']} |"
            for i in range(args.rounds)
            for name, rs in runs.items()
            for r in [rs[i]]
        ),
        "",
    ]
    (args.out / "sidecar-rss.md").write_text("\n".join(lines))
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
