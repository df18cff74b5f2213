"""Breaker micro-benchmark: Breakwater's engine next to pybreaker, aiobreaker and purgatory, in one process.

For each breaker it measures, on a no-op protected function:

- the cost of one protected, successful call (admission + recording the success);
- the cost of one rejected call while the breaker is open (the peers raise an exception, Breakwater
  returns an int);
- how much traced memory (tracemalloc) 1,000,000 rejections leave behind.

Each timing is the best (and the median) of ``--repeat`` runs of ``--calls`` iterations with the garbage
collector off, like ``timeit``, in CPU time of the benchmark thread; the "net" columns subtract a
bare loop that calls the same no-op. Every breaker is driven through the API its documentation shows
(pybreaker and aiobreaker ``call``, purgatory its decorator, Breakwater ``try_acquire`` /
``on_result``), with bound methods hoisted out of the loop.

Usage:
    .venv/bin/pip install -r bench/requirements.txt
    .venv/bin/python bench/breaker_bench.py            # writes bench/results/breaker.{md,json}
    .venv/bin/python bench/breaker_bench.py --quick    # a fast smoke run, results not written
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import gc
import json
import os
import platform
import shlex
import statistics
import sys
import time
import tracemalloc
from collections.abc import Callable
from datetime import timedelta
from importlib import metadata
from pathlib import Path
from typing import Any

from breakwater.api.spec import UpstreamSettings
from breakwater.breaker import REJECTED, Breaker, BreakerSettings, Mode, Outcome, WindowKind

RESULTS = Path(__file__).resolve().parent / "results"
TARGET_DECISION_US = 0.3

Loop = Callable[[int], None]


def noop() -> None:
    return None


class Boom(Exception):
    pass


def boom() -> None:
    raise Boom


@dataclasses.dataclass
class Peer:
    name: str
    package: str
    api: str
    success_loop: Callable[[], Loop]  # a fresh closed breaker, and a loop of n successful calls through it
    reject_loop: Callable[[], Loop]  # a fresh open breaker, and a loop of n rejected calls
    raises: bool


# --------------------------------------------------------------------------------------------------
# Breakwater
# --------------------------------------------------------------------------------------------------


# The policy's defaults (api/spec.py), on a count window of 100 calls.
COUNT_WINDOW = dataclasses.replace(
    UpstreamSettings().breaker_settings(), window_kind=WindowKind.COUNT, window_size=100
)


def breakwater_peer(name: str, settings: BreakerSettings, mode: Mode = Mode.ENFORCE) -> Peer:
    def success_loop() -> Loop:
        breaker = Breaker("bench", settings, mode=mode, clock=time.monotonic)
        acquire, record, ok = breaker.try_acquire, breaker.on_result, Outcome.SUCCESS

        def run(n: int) -> None:
            for _ in range(n):
                token = acquire()
                if token != REJECTED:
                    noop()
                    record(token, ok, 0.001)

        return run

    def reject_loop() -> Loop:
        breaker = Breaker(
            "bench", dataclasses.replace(settings, consecutive_failures=1), mode=mode, clock=time.monotonic
        )
        breaker.on_result(breaker.try_acquire(), Outcome.FAILURE, 0.001)  # trips it: open for 60 s
        acquire, record, ok = breaker.try_acquire, breaker.on_result, Outcome.SUCCESS

        def run(n: int) -> None:
            for _ in range(n):
                token = acquire()
                if token != REJECTED:
                    noop()
                    record(token, ok, 0.001)

        return run

    return Peer(
        name=name,
        package="breakwater",
        api="try_acquire() / on_result()",
        success_loop=success_loop,
        reject_loop=reject_loop,
        raises=False,
    )


# --------------------------------------------------------------------------------------------------
# Peers
# --------------------------------------------------------------------------------------------------


def pybreaker_peer() -> Peer:
    import pybreaker

    def success_loop() -> Loop:
        call = pybreaker.CircuitBreaker(fail_max=5, reset_timeout=60).call

        def run(n: int) -> None:
            for _ in range(n):
                call(noop)

        return run

    def reject_loop() -> Loop:
        cb = pybreaker.CircuitBreaker(fail_max=1, reset_timeout=3600)
        with contextlib.suppress(Boom, pybreaker.CircuitBreakerError):
            cb.call(boom)
        assert cb.current_state == "open", cb.current_state
        call, error = cb.call, pybreaker.CircuitBreakerError

        def run(n: int) -> None:
            for _ in range(n):
                try:  # noqa: SIM105 (contextlib.suppress would add its own cost to the measurement)
                    call(noop)
                except error:
                    pass

        return run

    return Peer("pybreaker", "pybreaker", "CircuitBreaker.call()", success_loop, reject_loop, raises=True)


def aiobreaker_peer() -> Peer:
    import aiobreaker

    def success_loop() -> Loop:
        call = aiobreaker.CircuitBreaker(fail_max=5, timeout_duration=timedelta(seconds=60)).call

        def run(n: int) -> None:
            for _ in range(n):
                call(noop)

        return run

    def reject_loop() -> Loop:
        cb = aiobreaker.CircuitBreaker(fail_max=1, timeout_duration=timedelta(hours=1))
        with contextlib.suppress(Boom, aiobreaker.CircuitBreakerError):
            cb.call(boom)
        assert cb.current_state == aiobreaker.CircuitBreakerState.OPEN, cb.current_state
        call, error = cb.call, aiobreaker.CircuitBreakerError

        def run(n: int) -> None:
            for _ in range(n):
                try:  # noqa: SIM105 (contextlib.suppress would add its own cost to the measurement)
                    call(noop)
                except error:
                    pass

        return run

    return Peer("aiobreaker", "aiobreaker", "CircuitBreaker.call()", success_loop, reject_loop, raises=True)


def purgatory_peer() -> Peer:
    from purgatory import SyncCircuitBreakerFactory
    from purgatory.domain.model import OpenedState

    def success_loop() -> Loop:
        protected = SyncCircuitBreakerFactory(default_threshold=5, default_ttl=60)("bench")(noop)

        def run(n: int) -> None:
            for _ in range(n):
                protected()

        return run

    def reject_loop() -> Loop:
        factory = SyncCircuitBreakerFactory(default_threshold=1, default_ttl=3600)
        failing = factory("bench")(boom)
        with contextlib.suppress(Boom, OpenedState):
            failing()
        protected = factory("bench")(noop)
        try:
            protected()
        except OpenedState:
            pass
        else:
            raise AssertionError("purgatory did not open")

        def run(n: int) -> None:
            for _ in range(n):
                try:  # noqa: SIM105 (contextlib.suppress would add its own cost to the measurement)
                    protected()
                except OpenedState:
                    pass

        return run

    return Peer("purgatory", "purgatory", "@factory(name) decorator", success_loop, reject_loop, raises=True)


# --------------------------------------------------------------------------------------------------
# Measuring
# --------------------------------------------------------------------------------------------------


def baseline_loop() -> Loop:
    def run(n: int) -> None:
        for _ in range(n):
            noop()

    return run


def time_per_op(make: Callable[[], Loop], n: int, repeat: int) -> tuple[float, float]:
    """(best, median) microseconds per iteration over `repeat` runs of `n` iterations, gc off.

    Measured in CPU time of this thread, so that other processes on a shared machine (time slices
    they take from us) do not count; cache and frequency effects of a busy machine still do.
    """
    make()(max(1, n // 10))  # warm up
    samples = []
    enabled = gc.isenabled()
    gc.disable()
    try:
        for _ in range(repeat):
            run = make()  # a fresh breaker per run: whatever one run leaves behind is gone before the next
            t0 = time.thread_time_ns()
            run(n)
            samples.append((time.thread_time_ns() - t0) / n / 1000.0)
    finally:
        if enabled:
            gc.enable()
    return min(samples), statistics.median(samples)


def memory_growth(make: Callable[[], Loop], n: int) -> dict[str, float]:
    """Traced memory left behind (and the peak above the start) by `n` rejections."""
    run = make()
    run(1000)
    gc.collect()
    tracemalloc.start()
    try:
        start = tracemalloc.get_traced_memory()[0]
        tracemalloc.reset_peak()
        run(n)
        gc.collect()
        end, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    return {
        "growth_bytes": end - start,
        "peak_above_start_bytes": peak - start,
        "bytes_per_rejection": (end - start) / n,
    }


def machine() -> dict[str, Any]:
    cpu = "unknown"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return {
        "nproc": os.cpu_count(),
        "load_average_at_start": list(os.getloadavg()),
        "python": sys.version.split()[0],
        "implementation": platform.python_implementation(),
        "platform": platform.platform(),
        "cpu": cpu,
    }


def version(package: str) -> str:
    try:
        return metadata.version(package)
    except metadata.PackageNotFoundError:
        return "?"


def kib(n: float) -> str:
    return f"{n / 1024:,.1f} KiB"


def write_markdown(path: Path, report: dict[str, Any]) -> None:
    m = report["machine"]
    p = report["parameters"]
    base = report["baseline_us"]
    lines = [
        "# Breaker micro-benchmark",
        "",
        "```",
        report["command"],
        "```",
        "",
        f"Machine: {m['nproc']} CPUs ({m['cpu']}), {m['implementation']} {m['python']}, {m['platform']}; "
        f"load average at start {m['load_average_at_start'][0]:.1f} (the machine is shared). "
        f"Recorded {report['recorded_at']}.",
        "",
        f"Each timing: best of {p['repeat']} runs of {p['calls']:,} iterations (median in brackets), "
        f"gc off, CPU time of the benchmark thread. Memory: tracemalloc, {p['rejections']:,} rejections, "
        "after `gc.collect()`. "
        f"A bare loop calling the same no-op costs {base['best']:.3f} µs per iteration; the *net* columns "
        "subtract it.",
        "",
        "| breaker | version | API | protected call, µs | net µs | rejection, µs | net µs | raises? "
        "| memory after 1M rejections | per rejection |",
        "|---|---|---|---:|---:|---:|---:|---|---:|---:|",
    ]
    for r in report["results"]:
        lines.append(
            f"| {r['name']} | {r['version']} | {r['api']} "
            f"| {r['success_us']['best']:.3f} ({r['success_us']['median']:.3f}) "
            f"| {r['success_us']['best'] - base['best']:.3f} "
            f"| {r['reject_us']['best']:.3f} ({r['reject_us']['median']:.3f}) "
            f"| {r['reject_us']['best'] - base['best']:.3f} "
            f"| {'yes' if r['raises'] else 'no'} "
            f"| {kib(r['memory']['growth_bytes'])} "
            f"| {r['memory']['bytes_per_rejection']:,.2f} B |"
        )
    lines += ["", "## Reading it", ""]
    lines += report.get("notes", [])
    path.write_text("\n".join(lines) + "\n")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--calls", type=int, default=500_000, help="iterations per timing run")
    parser.add_argument("--repeat", type=int, default=7, help="timing runs per figure (best and median kept)")
    parser.add_argument("--rejections", type=int, default=1_000_000, help="rejections for the memory figure")
    parser.add_argument("--quick", action="store_true", help="small numbers, print only, write nothing")
    parser.add_argument("--only", action="append", help="only the breakers whose name contains this")
    args = parser.parse_args(argv)
    if args.quick:
        args.calls, args.repeat, args.rejections = 100_000, 3, 100_000

    peers = [
        breakwater_peer("breakwater (count window, consecutive rule)", COUNT_WINDOW),
        breakwater_peer(
            "breakwater (count window, all three rules)",
            dataclasses.replace(
                COUNT_WINDOW, failure_rate_percent=50, slow_call_percent=80, slow_call_seconds=2.0
            ),
        ),
        breakwater_peer(
            "breakwater (30 s time window, all three rules)",
            dataclasses.replace(
                COUNT_WINDOW,
                failure_rate_percent=50,
                slow_call_percent=80,
                slow_call_seconds=2.0,
                window_kind=WindowKind.TIME,
                window_seconds=30.0,
            ),
        ),
        breakwater_peer("breakwater (Observe mode, count window)", COUNT_WINDOW, Mode.OBSERVE),
        pybreaker_peer(),
        aiobreaker_peer(),
        purgatory_peer(),  # last: its rejections leak, which would weigh on whoever runs after it
    ]
    if args.only:
        peers = [p for p in peers if any(o in p.name for o in args.only)]

    best, median = time_per_op(baseline_loop, args.calls, args.repeat)
    baseline = {"best": best, "median": median}
    print(f"baseline loop + no-op call: {best:.3f} µs (median {median:.3f})", flush=True)
    results = []
    for peer in peers:
        s_best, s_med = time_per_op(peer.success_loop, args.calls, args.repeat)
        r_best, r_med = time_per_op(peer.reject_loop, args.calls, args.repeat)
        mem = memory_growth(peer.reject_loop, args.rejections)
        row = {
            "name": peer.name,
            "package": peer.package,
            "version": version(peer.package),
            "api": peer.api,
            "raises": peer.raises,
            "success_us": {"best": s_best, "median": s_med},
            "reject_us": {"best": r_best, "median": r_med},
            "memory": mem,
        }
        results.append(row)
        print(
            f"{peer.name:50} call {s_best:7.3f} µs  reject {r_best:7.3f} µs  "
            f"memory +{kib(mem['growth_bytes'])} ({mem['bytes_per_rejection']:.2f} B/rejection)",
            flush=True,
        )

    if args.quick:
        return 0

    command = "cd /work/main && " + shlex.join([".venv/bin/python", "bench/breaker_bench.py", *sys.argv[1:]])
    report: dict[str, Any] = {
        "command": command,
        "recorded_at": time.strftime("%Y-%m-%d %H:%M:%S %Z"),
        "machine": machine(),
        "parameters": {"calls": args.calls, "repeat": args.repeat, "rejections": args.rejections},
        "baseline_us": baseline,
        "target_decision_us": TARGET_DECISION_US,
        "results": results,
    }
    report["notes"] = notes(report)
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "breaker.json").write_text(json.dumps(report, indent=2) + "\n")
    write_markdown(RESULTS / "breaker.md", report)
    print(f"wrote {RESULTS / 'breaker.md'} and {RESULTS / 'breaker.json'}")
    return 0


def notes(report: dict[str, Any]) -> list[str]:
    base = report["baseline_us"]["best"]
    rows = {r["name"]: r for r in report["results"]}
    ours = [r for r in report["results"] if r["package"] == "breakwater"]
    peers = [r for r in report["results"] if r["package"] != "breakwater"]
    default = ours[0]
    net_call = default["success_us"]["best"] - base
    verdict = "meets" if net_call <= TARGET_DECISION_US else "misses"
    out = [
        f"- Target: a breaker decision (try_acquire + on_result, success path) of at most "
        f"{TARGET_DECISION_US} µs. With the default settings Breakwater's decision costs "
        f"{net_call:.3f} µs net of the loop ({default['success_us']['best']:.3f} µs with it): it {verdict} "
        "the target on this machine.",
    ]
    if peers:
        fastest_peer = min(peers, key=lambda r: r["success_us"]["best"])
        cheapest_reject = min(peers, key=lambda r: r["reject_us"]["best"])
        speedup = fastest_peer["success_us"]["best"] / default["success_us"]["best"]
        out.append(
            f"- Per protected call Breakwater is {speedup:.1f}x "
            f"faster than the fastest peer ({fastest_peer['name']}); per rejection "
            f"{cheapest_reject['reject_us']['best'] / default['reject_us']['best']:.1f}x faster than the "
            f"cheapest peer rejection ({cheapest_reject['name']}), and without raising."
        )
    heavy = [r for r in ours if "time window" in r["name"]]
    if heavy:
        out.append(
            f"- The time window costs more ({heavy[0]['success_us']['best'] - base:.3f} µs net): each "
            "recorded call reads the clock (`time.monotonic`) and indexes a ring of per-second buckets."
        )
    leak = [r for r in report["results"] if r["memory"]["bytes_per_rejection"] > 16]
    for r in leak:
        out.append(
            f"- {r['name']} keeps {r['memory']['bytes_per_rejection']:,.0f} bytes per rejection "
            f"({kib(r['memory']['growth_bytes'])} after {report['parameters']['rejections']:,}): it raises "
            "the same exception instance every time, and every raise extends that instance's `__traceback__` "
            "chain."
        )
    if any("Observe" in r["name"] for r in ours):
        out.append(
            "- Observe mode never rejects: its *rejection* column is a call Enforce would have rejected, "
            "admitted as `OBSERVED_REJECT`, run (the no-op) and recorded, so it costs a full call."
        )
    flat = [r["name"] for r in ours if abs(r["memory"]["growth_bytes"]) < 4096]
    if flat:
        out.append(f"- Memory flat over the rejections (under 4 KiB of growth): {', '.join(flat)}.")
    out.append(
        "- The issue's reference points for the peers (about 2.0-2.4 µs per call, about 4 µs per rejection, "
        "purgatory about 18 µs) came from another harness (wall-clock time); the ratios within this table, "
        "measured side by side in one process, are what compares."
    )
    out.append(
        "- Breakwater's figures exclude measuring the call's duration (the proxy reads the clock around "
        "each upstream call anyway, for its latency histogram); the peers do not measure durations at all."
    )
    del rows
    return out


if __name__ == "__main__":
    raise SystemExit(main())
