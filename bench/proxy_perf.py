"""Where a proxy's core time goes at a fixed rate: a `perf` profile of core 0, per peer, in µs per request.

Not a test. Run ``.venv/bin/python bench/proxy_perf.py`` (needs nginx, haproxy and perf; ~2 minutes).
All traffic stays on 127.0.0.1: nginx (a static 1 KiB file) and the open-loop load on core 1, each
peer in turn alone on core 0 (HAProxy, the bare Python forwarder, the sidecar with every feature on,
interpreted and with its hot path compiled as the image runs it).
Per peer, `bench/proxy/cores.py` first measures core 0's exact busy time (less steal) at the fixed rate, then
`perf record -C 0` samples core 0 (cpu-clock, call graphs) for as long again (sampling perturbs the
core too much to be timed with it). Each sample of the peer goes in one bucket by its stack (the
kernel's paths that cost most in a VM, found in these profiles: waking the process on the other
core, taking a socket's lock, the epoll sleep and wake; and, in the idle task but not halted, the
interrupts and idle exits of its wakeups), and each bucket's share is priced from the unprofiled busy
time, per request: an estimate (the sampling's own cache and TLB disturbance lands in every bucket).
Writes ``bench/results/proxy-perf.md`` and ``.json``.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import os
import subprocess
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from proxy import peers as peer_defs
from proxy import records
from proxy.cores import CoreTimes
from proxy.loadgen import run_fixed_rate

REPO = Path(__file__).resolve().parents[1]
UPSTREAM_PORT, PEER_PORT, BW_FORWARD_PORT, BW_ADMIN_PORT = 18780, 18784, 18785, 18790
PEER_COMMS = {"haproxy": "haproxy", "bare": "python", "breakwater": "python", "breakwater-compiled": "python"}

# Kernel buckets, first match on the sample's stack (leaf first).
KERNEL_PATHS: list[tuple[str, Callable[[list[str]], bool]]] = [
    ("kernel: waking the process on the other core", lambda stack: "sock_def_readable" in stack),
    (
        "kernel: taking a socket's lock (lock_sock)",
        lambda stack: stack[0].startswith("__pv_queued"),
    ),
    ("kernel: epoll sleep and wake", lambda stack: "do_epoll_wait" in stack),
]
_HALTED = frozenset({"pv_native_safe_halt", "native_safe_halt", "default_idle", "poll_idle"})
USER_DSOS = [
    ("user: the hot path compiled by mypyc", "__mypyc."),
    ("user: the interpreter (libpython)", "libpython"),
    ("user: httptools (llhttp)", "parser.cpython"),
    ("user: uvloop (libuv)", "loop.cpython"),
    ("user: haproxy", "haproxy"),
    ("user: libc", "libc.so"),
]


def _load(rate: float, seconds: float) -> int:
    """Requests answered."""
    import uvloop

    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        result = runner.run(
            run_fixed_rate("127.0.0.1", PEER_PORT, peer_defs.BODY_PATH, rate=rate, duration=seconds, warmup=0)
        )
    return result.completed


def _samples(data: Path) -> list[tuple[str, str, list[str]]]:
    """(comm, leaf dso, stack of symbols leaf first) per sample, from `perf script`."""
    text = subprocess.run(
        ["perf", "script", "-i", str(data), "-F", "comm,ip,sym,dso"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    samples: list[tuple[str, str, list[str]]] = []
    for block in text.split("\n\n"):
        lines = [line for line in block.splitlines() if line.strip()]
        if not lines:
            continue
        comm = lines[0].split()[0]
        stack, dsos = [], []
        for frame in lines[1:]:
            parts = frame.split(maxsplit=1)
            if len(parts) < 2:
                continue
            sym, _, dso = parts[1].rpartition(" (")
            stack.append(sym.split("+", 1)[0])
            dsos.append(dso.rstrip(")"))
        if stack:
            samples.append((comm, dsos[0], stack))
    return samples


def _bucket(dso: str, stack: list[str]) -> str:
    if "kernel.kallsyms" in dso:
        for name, matches in KERNEL_PATHS:
            if matches(stack):
                return name
        return "kernel: other (TCP/IP, copies, system call entry and exit)"
    for name, part in USER_DSOS:
        if part in dso:
            return name
    return "user: other"


def profile(
    name: str, make: Callable[[], peer_defs.Peer], work: Path, args: argparse.Namespace
) -> dict[str, Any]:
    process = make().start(work, cpu=0)
    assert process is not None
    data = work / f"{name}.perf"
    try:
        _load(args.rate, 2.0)  # warm: pools, caches
        # Unprofiled first: sampling (an interrupt, a stack walk, a VM exit each) costs this core
        # more than the peer does, so the busy time is measured without it.
        core0 = CoreTimes.now(0)
        requests = max(1, _load(args.rate, args.seconds))
        core = CoreTimes.now(0).since(core0)
        argv = ["perf", "record", "-q", "-C", "0", "-F", str(args.frequency), "-g", "-o", str(data)]
        perf = subprocess.Popen([*argv, "--", "sleep", str(args.seconds)])
        _load(args.rate, args.seconds)
        perf.wait(timeout=60)
    finally:
        process.stop()
    samples = _samples(data)
    mine = [(dso, stack) for comm, dso, stack in samples if comm == PEER_COMMS[name]]
    # The idle task not halted: interrupts and idle exits (the wakeups the peer's traffic causes).
    waking = sum(1 for comm, _, stack in samples if comm.startswith("swapper") and stack[0] not in _HALTED)
    others = sum(1 for comm, _, _ in samples if comm != PEER_COMMS[name] and not comm.startswith("swapper"))
    per_request = 1e6 * (core.busy - core.steal) / requests
    counts = collections.Counter(_bucket(dso, stack) for dso, stack in mine)
    if waking:
        counts["kernel, in the idle task: interrupts and idle exits"] = waking
    busy = max(1, sum(counts.values()))
    return {
        "core_us_per_request": round(per_request, 1),
        "steal_us_per_request": round(1e6 * core.steal / requests, 1),
        "samples": {
            "peer": len(mine),
            "idle task, not halted": waking,
            "other tasks": others,
            "all": len(samples),
        },
        "buckets_us": {bucket: round(per_request * n / busy, 1) for bucket, n in counts.most_common()},
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--rate", type=float, default=1000.0)
    parser.add_argument("--seconds", type=float, default=20.0)
    parser.add_argument("--frequency", type=int, default=499, help="perf samples per second")
    parser.add_argument("--out", type=Path, default=REPO / "bench" / "results")
    args = parser.parse_args()
    if (missing := peer_defs.missing_tools("nginx", "haproxy", "perf", "taskset")) is not None:
        print(missing, file=sys.stderr)
        return 2
    os.sched_setaffinity(0, {1})
    work = Path(tempfile.mkdtemp(prefix="bw-proxy-perf-"))
    work.chmod(0o755)
    result = records.begin()
    upstream = peer_defs.start_upstream(work, UPSTREAM_PORT, cpu=1)
    compared = peer_defs.compared_on_cpu(work, PEER_PORT, UPSTREAM_PORT, BW_ADMIN_PORT, BW_FORWARD_PORT)
    try:
        peers = {name: profile(name, make, work, args) for name, make in compared.items()}
    finally:
        upstream.stop()
    for name, figures in peers.items():
        print(f"{name}: {figures['core_us_per_request']} µs per request: {figures['buckets_us']}")
    result.update(rate=args.rate, peers=peers)
    records.write(result, args.out, "proxy-perf", _markdown)
    return 0


def _markdown(result: dict[str, Any]) -> str:
    peers: dict[str, dict[str, Any]] = result["peers"]
    buckets = sorted({b for p in peers.values() for b in p["buckets_us"]})
    names = list(peers)
    lines = [
        "# Where a proxy's core time goes at a fixed rate (perf, core 0)",
        "",
        f"Recorded {result['recorded']} by `{result['command']}`; load average before "
        f"{result['load_before']}, after {result['load_after']}.",
        "",
        f"Each peer alone on core 0 at {result['rate']:,.0f} rps open loop (1 KiB answers from nginx on "
        "core 1). µs of core 0 per request: the exact busy time of an unprofiled run less steal "
        "(`bench/proxy/cores.py`), split by the share of the peer's perf samples in each bucket of a "
        "profiled run as long (one of each per peer).",
        "",
        "| µs per request | " + " | ".join(names) + " |",
        "| --- | " + " | ".join("---:" for _ in names) + " |",
        "| **core 0, the peer's** | "
        + " | ".join(f"**{peers[n]['core_us_per_request']}**" for n in names)
        + " |",
    ]
    for bucket in buckets:
        cells = [f"{peers[n]['buckets_us'].get(bucket, 0.0):.1f}" for n in names]
        lines.append(f"| {bucket} | " + " | ".join(cells) + " |")
    lines += [
        "| (steal: the hypervisor's, not counted above) | "
        + " | ".join(f"{peers[n]['steal_us_per_request']}" for n in names)
        + " |",
        "| samples (peer / idle task not halted / other tasks / all) | "
        + " | ".join(
            "{peer} / {idle task, not halted} / {other tasks} / {all}".format(**peers[n]["samples"])
            for n in names
        )
        + " |",
    ]
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    sys.exit(main())
