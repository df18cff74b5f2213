"""Where a proxied request's CPU goes: user and kernel time per request, and system calls per request,
for HAProxy, the bare Python forwarder (the floor: `bench/proxy/bare_forwarder.py`) and the sidecar.

Not a test. Run ``.venv/bin/python bench/proxy_cpu.py`` (needs nginx, haproxy, strace; ~3 minutes). All
traffic stays on 127.0.0.1. Each peer is pinned to core 0, nginx (a static 1 KiB file) and the load on
core 1. Every round measures the peers in turn at a fixed rate (open loop, `bench/proxy/loadgen.py`)
and reads the peer's user and system CPU time from /proc (its run time; the split tick-sampled) and core
0's busy time less steal (`bench/proxy/cores.py`: the run time and its wakeups); the rounds are
interleaved and every figure is the median over them (a ratio: the median of the per-round ratios).
Then one ``strace -c -f`` run per peer under wrk (4 connections, 5 s) counts
its system calls per request (strace slows the peer; the counts per request do not depend on that).
Writes ``bench/results/proxy-cpu.md`` and ``.json``.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from proxy import peers as peer_defs
from proxy import records
from proxy.cores import CoreTimes
from proxy.loadgen import run_fixed_rate

REPO = Path(__file__).resolve().parents[1]
UPSTREAM_PORT, PEER_PORT, BW_FORWARD_PORT, BW_ADMIN_PORT = 18980, 18984, 18985, 18990
TICKS = os.sysconf("SC_CLK_TCK")
_MEASURES = ("user_us", "sys_us", "core_busy_us", "core_steal_us", "core_us")


def _cpu(pid: int) -> tuple[float, float]:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return int(fields[11]) / TICKS, int(fields[12]) / TICKS


def _fixed_rate(pid: int, rate: float, seconds: float) -> dict[str, float]:
    import uvloop

    user0, sys0 = _cpu(pid)
    core0 = CoreTimes.now(0)
    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        result = runner.run(
            run_fixed_rate(
                "127.0.0.1", PEER_PORT, peer_defs.BODY_PATH, rate=rate, duration=seconds, warmup=2.0
            )
        )
    user1, sys1 = _cpu(pid)
    core = CoreTimes.now(0).since(core0)
    requests = rate * (seconds + 2.0)  # the warm-up's requests are served (and cost CPU) too
    return {
        "user_us": round(1e6 * (user1 - user0) / requests, 1),
        "sys_us": round(1e6 * (sys1 - sys0) / requests, 1),
        "core_busy_us": round(1e6 * core.busy / requests, 1),
        "core_steal_us": round(1e6 * core.steal / requests, 1),
        "core_us": round(1e6 * (core.busy - core.steal) / requests, 1),
        "errors": result.summary()["errors"],
    }


def _syscalls(pid: int, work: Path) -> dict[str, float]:
    out = work / f"strace-{pid}.txt"
    tracer = subprocess.Popen(
        ["strace", "-c", "-f", "-p", str(pid), "-o", str(out)], stderr=subprocess.DEVNULL
    )
    time.sleep(1)
    argv = [
        "taskset",
        "-c",
        "1",
        "wrk",
        "-t1",
        "-c4",
        "-d5s",
        f"http://127.0.0.1:{PEER_PORT}{peer_defs.BODY_PATH}",
    ]
    wrk = subprocess.run(argv, capture_output=True, text=True, timeout=60).stdout
    time.sleep(0.5)
    tracer.terminate()
    tracer.wait(timeout=30)
    found = re.search(r"(\d+) requests in", wrk)
    requests = int(found.group(1)) if found else 0
    calls: dict[str, float] = {}
    for line in out.read_text().splitlines():
        parts = line.split()
        if len(parts) >= 5 and parts[3].isdigit() and parts[-1] != "total" and requests:
            per_request = int(parts[3]) / requests
            if per_request >= 0.01:
                calls[parts[-1]] = round(per_request, 2)
    return calls


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--rate", type=float, default=2000.0)
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--out", type=Path, default=REPO / "bench" / "results")
    args = parser.parse_args()
    if (missing := peer_defs.missing_tools("nginx", "haproxy", "strace", "wrk", "taskset")) is not None:
        print(missing, file=sys.stderr)
        return 2
    os.sched_setaffinity(0, {1})
    work = Path(tempfile.mkdtemp(prefix="bw-proxy-cpu-"))
    work.chmod(0o755)
    result = records.begin()
    upstream = peer_defs.start_upstream(work, UPSTREAM_PORT, cpu=1)
    peers = peer_defs.compared_on_cpu(work, PEER_PORT, UPSTREAM_PORT, BW_ADMIN_PORT, BW_FORWARD_PORT)
    rounds: dict[str, list[dict[str, float]]] = {name: [] for name in peers}
    syscalls: dict[str, dict[str, float]] = {}
    try:
        for round_ in range(args.repeat):
            for name, make in peers.items():
                process = make().start(work, cpu=0)
                assert process is not None
                try:
                    rounds[name].append(_fixed_rate(process.popen.pid, args.rate, args.seconds))
                    if round_ == 0:
                        syscalls[name] = _syscalls(process.popen.pid, work)
                finally:
                    process.stop()
                print(f"round {round_ + 1} {name}: {rounds[name][-1]}", flush=True)
    finally:
        upstream.stop()
    medians = {
        name: {key: statistics.median(r[key] for r in runs) for key in _MEASURES}
        for name, runs in rounds.items()
    }
    result.update(rate=args.rate, rounds=rounds, medians=medians, syscalls_per_request=syscalls)
    records.write(result, args.out, "proxy-cpu", _markdown)
    return 0


def _round_ratio(rounds: dict[str, list[dict[str, float]]], name: str) -> float:
    """The median over the rounds of `name`'s core time over HAProxy's in the same round."""
    pairs = zip(rounds[name], rounds["haproxy"], strict=True)
    return statistics.median(mine["core_us"] / theirs["core_us"] for mine, theirs in pairs)


def _markdown(result: dict[str, Any]) -> str:
    medians: dict[str, dict[str, float]] = result["medians"]
    haproxy = medians["haproxy"]
    lines = [
        "# Where a proxied request's CPU goes: user and kernel time, system calls",
        "",
        f"Recorded {result['recorded']} by `{result['command']}`; load average before "
        f"{result['load_before']}, after {result['load_after']}.",
        "",
        f"Each peer pinned to core 0 at {result['rate']:,.0f} rps open loop (1 KiB answers from nginx on"
        " core 1); the process's CPU time per request from /proc (its run time; the user/kernel split"
        " tick-sampled); core 0's busy time per request (`bench/proxy/cores.py`), the time the"
        " hypervisor gave another guest while this core wanted to run (steal) and the difference, the"
        " core time the peer and its wakeups used; medians over interleaved rounds, and for the core"
        " ratio the median of the per-round ratios; system calls per request from `strace -c -f` under"
        " wrk (4 connections).",
        "",
        "| peer | user µs/req | kernel µs/req | total | total / HAProxy's | user / HAProxy's "
        "| core busy µs/req | steal | **core µs/req** | core / HAProxy's | system calls/req |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | --- |",
    ]
    for name, m in medians.items():
        total = m["user_us"] + m["sys_us"]
        calls = result["syscalls_per_request"].get(name, {})
        listed = ", ".join(f"{k} {v}" for k, v in sorted(calls.items(), key=lambda kv: -kv[1]))
        lines.append(
            f"| {name} | {m['user_us']:.1f} | {m['sys_us']:.1f} | {total:.1f} | "
            f"{total / (haproxy['user_us'] + haproxy['sys_us']):.2f} | "
            f"{m['user_us'] / haproxy['user_us']:.1f} | "
            f"{m['core_busy_us']:.1f} | {m['core_steal_us']:.1f} | **{m['core_us']:.1f}** | "
            f"{_round_ratio(result['rounds'], name):.2f} | "
            f"{sum(calls.values()):.2f} ({listed}) |"
        )
    lines += ["", "Per round:", ""]
    for name, runs in result["rounds"].items():
        lines.append(
            f"- {name}: "
            + "; ".join(
                f"user {r['user_us']}, kernel {r['sys_us']}, core busy {r['core_busy_us']}"
                f" minus steal {r['core_steal_us']} = {r['core_us']}"
                for r in runs
            )
        )
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    sys.exit(main())
