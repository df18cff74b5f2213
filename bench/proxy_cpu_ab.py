"""CPU time per proxied request of two sidecar source trees, interleaved: did a hot-path change pay?

Not a test. Run, for an older commit against the working tree::

    git archive COMMIT operator | tar -x -C /tmp/old
    nice -n 19 .venv/bin/python bench/proxy_cpu_ab.py --old /tmp/old/operator --new operator

(needs nginx; about 15 s per sidecar and round with the defaults). All traffic stays on 127.0.0.1.
Each round starts the sidecar from each tree in turn (``PYTHONPATH`` first, every feature on: the
policy of `bench/proxy/peers.py`), drives it open loop at a fixed rate with `bench/proxy/loadgen.py`
against nginx (a static 1 KiB file), and reads the sidecar's user and system CPU time from /proc.
Nothing is pinned by default (a shared machine), so rounds differ with the machine's load: compare
old and new within a round, and the medians of the per-round ratios. With ``--pin`` (a machine with
nothing else running) the sidecar runs alone on core 0, nginx and the load on core 1, and core 0's
busy time less steal (`bench/proxy/cores.py`: the run time and its wakeups) is measured too:
``core_us``, steadier than the process times on a VM whose host steals. Prints the rounds and the
medians, and writes nothing unless ``--out FILE`` (JSON).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import sys
import tempfile
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from proxy import peers as peer_defs
from proxy.cores import CoreTimes
from proxy.loadgen import run_fixed_rate

UPSTREAM_PORT, PEER_PORT, FORWARD_PORT, ADMIN_PORT = 18780, 18784, 18785, 18790
TICKS = os.sysconf("SC_CLK_TCK")


def _cpu(pid: int) -> tuple[float, float]:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return int(fields[11]) / TICKS, int(fields[12]) / TICKS


def _one(
    work: Path, source: Path, rate: float, seconds: float, warmup: float, *, pin: bool
) -> dict[str, Any]:
    import uvloop

    peer = peer_defs.breakwater(work, PEER_PORT, UPSTREAM_PORT, ADMIN_PORT, FORWARD_PORT)
    peer.env = {"PYTHONPATH": str(source.resolve())}
    process = peer.start(work, cpu=0 if pin else None)
    assert process is not None
    try:
        pid = process.popen.pid
        with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
            path = peer_defs.BODY_PATH
            runner.run(run_fixed_rate("127.0.0.1", PEER_PORT, path, rate=rate, duration=warmup, warmup=0.0))
            user0, sys0 = _cpu(pid)
            core0 = CoreTimes.now(0)
            result = runner.run(
                run_fixed_rate("127.0.0.1", PEER_PORT, path, rate=rate, duration=seconds, warmup=0.0)
            )
            core = CoreTimes.now(0).since(core0)
            user1, sys1 = _cpu(pid)
    finally:
        process.stop()
    summary = result.summary()
    requests = max(1, result.completed)
    pinned = {"core_us": round(1e6 * (core.busy - core.steal) / requests, 1)} if pin else {}
    return {
        **pinned,
        "user_us": round(1e6 * (user1 - user0) / requests, 1),
        "sys_us": round(1e6 * (sys1 - sys0) / requests, 1),
        "total_us": round(1e6 * (user1 - user0 + sys1 - sys0) / requests, 1),
        "completed": result.completed,
        "errors": summary["errors"],
        "p50_ms": summary["p50_ms"],
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--old", type=Path, required=True, help="the old tree's operator/ directory")
    parser.add_argument("--new", type=Path, required=True, help="the new tree's operator/ directory")
    parser.add_argument("--rate", type=float, default=2000.0)
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--warmup", type=float, default=2.0)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--out", type=Path)
    parser.add_argument("--pin", action="store_true", help="sidecar alone on core 0; measure core 0 too")
    args = parser.parse_args()
    keys = ("user_us", "sys_us", "total_us", *(("core_us",) if args.pin else ()))
    if args.pin:
        os.sched_setaffinity(0, {1})
    work = Path(tempfile.mkdtemp(prefix="bw-proxy-cpu-ab-"))
    work.chmod(0o755)
    load_before = Path("/proc/loadavg").read_text().split()[:3]
    upstream = peer_defs.start_upstream(work, UPSTREAM_PORT, cpu=1 if args.pin else None)
    rounds: list[dict[str, dict[str, Any]]] = []
    try:
        for round_ in range(args.rounds):
            # Alternate which goes first, so a load trend within a round favours neither.
            order = ("old", "new") if round_ % 2 == 0 else ("new", "old")
            figures: dict[str, dict[str, Any]] = {}
            for name in order:
                source = args.old if name == "old" else args.new
                figures[name] = _one(work, source, args.rate, args.seconds, args.warmup, pin=args.pin)
                print(f"round {round_ + 1} {name}: {figures[name]}", flush=True)
            rounds.append(figures)
    finally:
        upstream.stop()
    ratios = {key: [r["new"][key] / r["old"][key] for r in rounds if r["old"][key]] for key in keys}
    medians = {
        name: {key: statistics.median(r[name][key] for r in rounds) for key in keys}
        for name in ("old", "new")
    }
    print(f"medians (µs of CPU per request): {medians}")
    print(
        "new/old per round: "
        + "; ".join(f"{key} " + ", ".join(f"{x:.2f}" for x in values) for key, values in ratios.items())
    )
    print("median new/old: " + ", ".join(f"{k} {statistics.median(v):.2f}" for k, v in ratios.items() if v))
    if args.out is not None:
        record = {
            "command": " ".join(sys.argv),
            "load_before": load_before,
            "load_after": Path("/proc/loadavg").read_text().split()[:3],
            "rate": args.rate,
            "seconds": args.seconds,
            "rounds": rounds,
            "medians": medians,
            "ratios": ratios,
        }
        args.out.write_text(json.dumps(record, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
