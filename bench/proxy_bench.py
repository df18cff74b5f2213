"""The proxy benchmark: direct vs HAProxy vs nginx vs a plain aiohttp proxy vs the Breakwater sidecar.

Not a test. Run ``bash bench/run_proxy.sh`` (installs haproxy, nginx and wrk from Debian, then runs
this). All traffic stays on 127.0.0.1. Layout on a 2-core machine:

- core 0: the proxy under test (``taskset -c 0``), alone;
- core 1: the upstream (nginx, one worker, a static 1 KiB file), wrk and this script's open-loop
  generator. For "direct", the upstream itself is measured.

Per peer: max throughput (wrk, closed loop, 1 thread, 64 connections), then latency at a fixed rate
(default 1,000 rps, open loop, see `bench/proxy/loadgen.py`) with the CPU time and RSS of the peer's
process tree over that run. "Added latency" is the peer's percentile minus the direct percentile.
For each proxy, core 0's exact busy time less steal (`bench/proxy/cores.py`) is also taken over both runs: per
request at max throughput (the proxy's CPU-seconds per request, which says what one core could carry
even when the load generator is the limit), and per 1,000 rps at the fixed rate.
Writes ``bench/results/proxy.json`` and ``.md`` and ``docs/img/proxy-latency.png``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import re
import shlex
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from proxy import peers as peer_defs
from proxy.cores import CoreTimes
from proxy.loadgen import run_fixed_rate

REPO = Path(__file__).resolve().parents[1]
UPSTREAM_PORT, HAPROXY_PORT, NGINX_PORT, AIOHTTP_PORT, BW_PORT = 18080, 18081, 18082, 18083, 18084
BW_FORWARD_PORT, BW_ADMIN_PORT = 18085, 18090
PROXY_CPU, LOAD_CPU = 0, 1


def _loadavg() -> list[float]:
    return [float(x) for x in Path("/proc/loadavg").read_text().split()[:3]]


def _cpu_model() -> str:
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            return line.split(":", 1)[1].strip()
    return platform.processor() or "unknown"


def _version(argv: list[str]) -> str:
    try:
        out = subprocess.run(argv, capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.TimeoutExpired):
        return "unavailable"
    return (out.stdout + out.stderr).strip().splitlines()[0] if (out.stdout + out.stderr).strip() else "?"


def _to_ms(text: str) -> float:
    match = re.fullmatch(r"([\d.]+)(us|ms|s)", text)
    if not match:
        return float("nan")
    value, unit = float(match.group(1)), match.group(2)
    return value / 1000 if unit == "us" else value * 1000 if unit == "s" else value


def run_wrk(port: int, seconds: float, connections: int = 64) -> dict[str, Any]:
    argv = ["taskset", "-c", str(LOAD_CPU), "wrk", "-t1", f"-c{connections}", f"-d{max(1, round(seconds))}s"]
    argv += ["--latency", f"http://127.0.0.1:{port}{peer_defs.BODY_PATH}"]
    out = subprocess.run(argv, capture_output=True, text=True, timeout=seconds + 60).stdout
    rps = re.search(r"Requests/sec:\s+([\d.]+)", out)
    requests = re.search(r"(\d+) requests in", out)
    errors = re.search(r"Non-2xx or 3xx responses:\s+(\d+)", out)
    socket_errors = re.search(r"Socket errors: (.*)", out)
    latency = {p: _to_ms(v) for p, v in re.findall(r"^\s+(\d+)%\s+(\S+)", out, re.MULTILINE)}
    return {
        "command": shlex.join(argv),
        "rps": float(rps.group(1)) if rps else 0.0,
        "requests": int(requests.group(1)) if requests else 0,
        "non_2xx": int(errors.group(1)) if errors else 0,
        "socket_errors": socket_errors.group(1) if socket_errors else "",
        "latency_ms": latency,
    }


def fixed_rate(port: int, rate: float, duration: float, root_pid: int | None) -> dict[str, Any]:
    before = peer_defs.process_tree_usage(root_pid) if root_pid else (0.0, 0)
    core0 = CoreTimes.now(PROXY_CPU)
    wall0 = time.monotonic()
    coro = run_fixed_rate("127.0.0.1", port, peer_defs.BODY_PATH, rate=rate, duration=duration, warmup=2.0)
    try:
        import uvloop

        with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
            result = runner.run(coro)
    except ImportError:
        result = asyncio.run(coro)
    wall = time.monotonic() - wall0
    core = CoreTimes.now(PROXY_CPU).since(core0)
    after = peer_defs.process_tree_usage(root_pid) if root_pid else (0.0, 0)
    summary: dict[str, Any] = result.summary()
    if root_pid:
        vcpu = (after[0] - before[0]) / wall
        summary["cpu_vcpu"] = round(vcpu, 3)
        summary["cpu_vcpu_per_1k_rps"] = round(vcpu / (rate / 1000), 3)
        summary["core_vcpu_per_1k_rps"] = round((core.busy - core.steal) / core.wall / (rate / 1000), 3)
        summary["core_steal_per_1k_rps"] = round(core.steal / core.wall / (rate / 1000), 3)
        summary["rss_mb"] = round(after[1] / 2**20, 1)
    return summary


def measure(peer: peer_defs.Peer, work: Path, args: argparse.Namespace) -> dict[str, Any]:
    print(f"== {peer.name}: {peer.label}", flush=True)
    doc: dict[str, Any] = {"label": peer.label, "loadavg_before": _loadavg()}
    process = peer.start(work, cpu=PROXY_CPU)
    try:
        run_wrk(peer.port, 2)  # warm-up: pools, caches, JIT-free but allocator-warm
        core0 = CoreTimes.now(PROXY_CPU)
        doc["max"] = run_wrk(peer.port, args.max_seconds)
        core = CoreTimes.now(PROXY_CPU).since(core0)
        if process is not None and doc["max"]["requests"]:
            requests = doc["max"]["requests"]
            doc["max"]["core_us_per_request"] = round(1e6 * (core.busy - core.steal) / requests, 2)
            doc["max"]["core_steal_us_per_request"] = round(1e6 * core.steal / requests, 2)
            doc["max"]["core_busy_fraction"] = round(core.busy / core.wall, 3)
        print(
            f"   max throughput {doc['max']['rps']:.0f} rps, core 0 "
            f"{doc['max'].get('core_us_per_request', '-')} µs per request",
            flush=True,
        )
        doc["fixed"] = fixed_rate(peer.port, args.rate, args.duration, process.popen.pid if process else None)
        fixed = doc["fixed"]
        print(
            f"   at {args.rate:.0f} rps: p50 {fixed['p50_ms']} ms p99 {fixed['p99_ms']} ms "
            f"errors {fixed['errors']} cpu/1k {fixed.get('cpu_vcpu_per_1k_rps')} "
            f"rss {fixed.get('rss_mb')} MB",
            flush=True,
        )
        if peer.name in peer_defs.SIDECARS:
            with urllib.request.urlopen(f"http://127.0.0.1:{BW_ADMIN_PORT}/stats", timeout=5) as resp:
                stats = json.load(resp)["upstreams"]["bench"]
            doc["sidecar_stats"] = {
                k: stats[k] for k in ("state", "requests", "paths", "retries", "fallbacks", "cache", "window")
            }
    finally:
        if process is not None:
            process.stop()
    doc["loadavg_after"] = _loadavg()
    return doc


def combine(rounds: list[dict[str, Any]]) -> dict[str, Any]:
    """Per peer, the median over the rounds of every number (max rps, percentiles, CPU, RSS)."""
    combined: dict[str, Any] = {}
    for name in rounds[0]:
        runs = [r[name] for r in rounds]
        fixed_keys = [k for k, v in runs[0]["fixed"].items() if isinstance(v, int | float)]
        combined[name] = {
            "label": runs[0]["label"],
            "max": {"rps": statistics.median(run["max"]["rps"] for run in runs)},
            "core_us_rounds": [run["max"].get("core_us_per_request") for run in runs],
            "fixed": {k: statistics.median(run["fixed"][k] for run in runs) for k in fixed_keys},
            "max_rps_rounds": [run["max"]["rps"] for run in runs],
            "p99_ms_rounds": [run["fixed"]["p99_ms"] for run in runs],
        }
        if all(run["max"].get("core_us_per_request") for run in runs):
            combined[name]["max"]["core_us_per_request"] = statistics.median(
                run["max"]["core_us_per_request"] for run in runs
            )
        combined[name]["fixed"]["errors"] = sum(run["fixed"]["errors"] for run in runs)
        if "sidecar_stats" in runs[-1]:
            combined[name]["sidecar_stats"] = runs[-1]["sidecar_stats"]
    return combined


def plot(results: dict[str, Any], path: Path, rate: float) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = list(results)
    marks = [("p50_ms", "p50"), ("p90_ms", "p90"), ("p99_ms", "p99"), ("p999_ms", "p99.9")]
    fig, ax = plt.subplots(figsize=(9, 4.8), dpi=120)
    width = 0.8 / len(marks)
    for k, (key, label) in enumerate(marks):
        xs = [i + (k - (len(marks) - 1) / 2) * width for i in range(len(names))]
        ys = [results[n]["fixed"][key] for n in names]
        bars = ax.bar(xs, ys, width, label=label)
        ax.bar_label(bars, labels=[f"{y:.2f}" for y in ys], fontsize=6, rotation=90, padding=2)
    ax.set_xticks(range(len(names)), [results[n]["label"].split(" (")[0] for n in names], fontsize=8)
    ax.set_yscale("log")
    ax.set_ylabel("latency (ms, log scale)")
    ax.set_title(f"Latency at a fixed {rate:.0f} rps, open loop, 1 KiB responses (proxy pinned to 1 core)")
    ax.legend(title="percentile", fontsize=8)
    ax.grid(axis="y", which="both", alpha=0.3)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)


def write_markdown(doc: dict[str, Any], path: Path) -> None:
    results = doc["peers"]
    direct = results.get("direct", {}).get("fixed", {})
    lines = [
        "# Proxy benchmark",
        "",
        f"Recorded {doc['started']} by `{doc['command']}` (`bash bench/run_proxy.sh` installs the peers).",
        "",
        f"Machine: {doc['machine']['cpus']} x {doc['machine']['cpu']}, Python {doc['versions']['python']}; "
        f"load average before the run {doc['loadavg_start']}, after {doc['loadavg_end']}"
        + (" (a background build was running: numbers are noisy)" if doc["loadavg_start"][0] > 1.5 else "")
        + ".",
        "",
        "Method: the proxy under test is pinned to core 0; the upstream (nginx, one worker, static",
        "1 KiB file), wrk and the load generator share core 1. *Max* is wrk closed-loop (1 thread,",
        f"64 connections, {doc['settings']['max_seconds']:.0f} s). Latency is open-loop at a fixed "
        f"{doc['settings']['rate']:.0f} rps for {doc['settings']['duration']:.0f} s after a 2 s warm-up,",
        "measured from each request's due time (`bench/proxy/loadgen.py`, a wrk2-style generator: wrk2",
        "is not packaged in Debian, and wrk's Lua `delay()` is closed-loop). *Added* = peer percentile",
        "minus direct percentile. CPU is the peer's process-tree CPU time over the fixed-rate run divided",
        "by wall time (vCPU), per 1,000 rps; RSS at its end. *Core* figures are core 0's busy time less",
        "steal (`bench/proxy/cores.py`: the peer's run time and its wakeups): per request during the",
        "max run, and per 1,000 rps during the fixed-rate run. The peers are",
        f"measured in turn, {doc['settings']['repeat']} rounds, interleaved; every figure is the median",
        "over the rounds (all rounds are in the JSON).",
        "",
        "| peer | max rps | core µs/req at max | p50 ms | p99 ms | p99.9 ms | added p50 | added p99 "
        "| vCPU/1k rps | core vCPU/1k rps | RSS MB |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for name, res in results.items():
        fixed = res["fixed"]
        added50 = fixed["p50_ms"] - direct.get("p50_ms", 0) if name != "direct" else 0.0
        added99 = fixed["p99_ms"] - direct.get("p99_ms", 0) if name != "direct" else 0.0
        lines.append(
            f"| {res['label']} | {res['max']['rps']:,.0f} | {_figure(res['max'], 'core_us_per_request', 1)} "
            f"| {fixed['p50_ms']:.3f} | {fixed['p99_ms']:.3f} | "
            f"{fixed['p999_ms']:.3f} | {added50:.3f} | {added99:.3f} | "
            f"{_figure(fixed, 'cpu_vcpu_per_1k_rps', 3)} | {_figure(fixed, 'core_vcpu_per_1k_rps', 3)} | "
            f"{_figure(fixed, 'rss_mb', 1)} |"
        )
    lines += _same_round_ratios(doc["rounds"])
    lines += [
        "",
        "Per round (the spread is the noise of a shared machine): "
        + "; ".join(
            f"{n} max rps {[round(x) for x in r['max_rps_rounds']]}, p99 ms {r['p99_ms_rounds']}"
            for n, r in results.items()
        )
        + ".",
        "",
        "Errors (non-2xx or failed) during the fixed-rate runs: "
        + ", ".join(f"{n} {r['fixed']['errors']}" for n, r in results.items())
        + ".",
        "",
        "![latency percentiles per peer](../../docs/img/proxy-latency.png)",
        "",
        "Versions: " + "; ".join(f"{k} {v}" for k, v in doc["versions"].items()) + ".",
        "",
    ]
    for name in peer_defs.SIDECARS:
        if name not in results or "sidecar_stats" not in results[name]:
            continue
        lines += [
            f"Counters of `{name}` after its last run (every request went through breaker, bulkhead, retry",
            "budget and the cache tee; `paths` counts the requests the fast path and the full path served): `"
            + json.dumps(results[name]["sidecar_stats"])
            + "`",
            "",
        ]
    if any(name in results for name in peer_defs.SIDECARS):
        lines += [
            "The sidecar's policy in this run (`bench/proxy/peers.py`, `breakwater_config`):",
            "",
            "```json",
            json.dumps(doc["breakwater_policy"], indent=2),
            "```",
            "",
        ]
    path.write_text("\n".join(lines))


def _figure(values: dict[str, Any], key: str, digits: int) -> str:
    value = values.get(key)
    return "-" if value is None else f"{value:.{digits}f}"


def _same_round_ratios(rounds: list[dict[str, Any]]) -> list[str]:
    """Each sidecar build against HAProxy within each round (the only comparison this machine's noise
    allows)."""
    if not rounds or "haproxy" not in rounds[0]:
        return []
    rows = []
    for number, peers in enumerate(rounds, 1):
        ha, direct = peers["haproxy"], peers.get("direct")
        for name in (n for n in peer_defs.SIDECARS if n in peers):
            bw = peers[name]
            cells = [f"{bw['max']['rps'] / ha['max']['rps']:.2f}" if ha["max"]["rps"] else "-"]
            cells.append(
                f"{ha['max']['rps'] / direct['max']['rps']:.2f}" if direct and direct["max"]["rps"] else "-"
            )
            bw_us, ha_us = bw["max"].get("core_us_per_request"), ha["max"].get("core_us_per_request")
            cells.append(f"{ha_us / bw_us:.2f}" if bw_us and ha_us else "-")
            bw_k, ha_k = bw["fixed"].get("core_vcpu_per_1k_rps"), ha["fixed"].get("core_vcpu_per_1k_rps")
            cells.append(f"{bw_k / ha_k:.2f}" if bw_k and ha_k else "-")
            rows.append(f"| {number} | {name} | " + " | ".join(cells) + " |")
    if not rows:
        return []
    return [
        "",
        "Breakwater against HAProxy, round by round: max rps ratio (it counts only where HAProxy's max is",
        "clearly below direct's); the ratio of core 0's CPU-seconds per request at max (HAProxy's over",
        "Breakwater's: the share of HAProxy's throughput one core would give Breakwater); and core 0's",
        "busy time at the fixed rate (Breakwater's over HAProxy's).",
        "",
        "| round | sidecar | max rps, BW / HAProxy | HAProxy max / direct max "
        "| per-request CPU at max, HAProxy / BW | core vCPU at fixed rate, BW / HAProxy |",
        "| ---: | --- | ---: | ---: | ---: | ---: |",
        *rows,
    ]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--rate", type=float, default=1000.0, help="fixed rate for the latency run")
    parser.add_argument("--duration", type=float, default=15.0, help="seconds recorded at the fixed rate")
    parser.add_argument("--max-seconds", type=float, default=8.0, help="seconds of the max-throughput run")
    parser.add_argument("--repeat", type=int, default=3, help="rounds over all peers (medians are reported)")
    parser.add_argument(
        "--peers",
        default="direct,haproxy,nginx,aiohttp,breakwater,breakwater-compiled",
        help="comma-separated subset, in order",
    )
    parser.add_argument("--out", type=Path, default=REPO / "bench" / "results")
    parser.add_argument("--plot", type=Path, default=REPO / "docs" / "img" / "proxy-latency.png")
    parser.add_argument("--name", default="proxy", help="result file stem (proxy -> proxy.json, proxy.md)")
    args = parser.parse_args()

    if (missing := peer_defs.missing_tools("nginx", "haproxy", "wrk", "taskset")) is not None:
        print(missing, file=sys.stderr)
        return 2
    if (os.cpu_count() or 1) < 2:
        print("needs at least 2 CPUs (proxy on one, load and upstream on the other)", file=sys.stderr)
        return 2
    os.sched_setaffinity(0, {LOAD_CPU})

    work = Path(tempfile.mkdtemp(prefix="bw-proxy-bench-"))
    work.chmod(0o755)  # nginx workers drop privileges and must read the 1 KiB file
    doc: dict[str, Any] = {
        "command": shlex.join([sys.executable.rsplit("/", 1)[-1], *sys.argv]),
        "started": time.strftime("%Y-%m-%d %H:%M:%S %Z"),
        "machine": {"cpus": os.cpu_count(), "cpu": _cpu_model(), "kernel": platform.release()},
        "loadavg_start": _loadavg(),
        "settings": {
            "rate": args.rate,
            "duration": args.duration,
            "max_seconds": args.max_seconds,
            "repeat": args.repeat,
        },
        "versions": {
            "python": platform.python_version(),
            "haproxy": _version(["haproxy", "-v"]),
            "nginx": _version(["nginx", "-v"]),
            "wrk": _version(["wrk", "-v"]),
        },
    }
    try:
        import aiohttp
        import uvloop

        doc["versions"]["aiohttp"] = aiohttp.__version__
        doc["versions"]["uvloop"] = uvloop.__version__
    except ImportError:
        pass

    catalogue = {
        "direct": peer_defs.Peer("direct", "direct to the upstream (no proxy)", UPSTREAM_PORT),
        "haproxy": peer_defs.haproxy(work, HAPROXY_PORT, UPSTREAM_PORT),
        "nginx": peer_defs.nginx_proxy(work, NGINX_PORT, UPSTREAM_PORT),
        "aiohttp": peer_defs.plain_aiohttp(AIOHTTP_PORT, UPSTREAM_PORT),
        "breakwater": peer_defs.breakwater(work, BW_PORT, UPSTREAM_PORT, BW_ADMIN_PORT, BW_FORWARD_PORT),
    }
    if "breakwater-compiled" in args.peers.split(","):
        catalogue["breakwater-compiled"] = peer_defs.breakwater(
            work, BW_PORT, UPSTREAM_PORT, BW_ADMIN_PORT, BW_FORWARD_PORT, compiled=peer_defs.compiled_build()
        )
    doc["breakwater_policy"] = peer_defs.breakwater_config(
        port=BW_PORT, upstream=UPSTREAM_PORT, admin=BW_ADMIN_PORT, forward=BW_FORWARD_PORT
    )["upstreams"]
    upstream = peer_defs.start_upstream(work, UPSTREAM_PORT, cpu=LOAD_CPU)
    rounds: list[dict[str, Any]] = []
    try:
        for number in range(args.repeat):
            print(f"-- round {number + 1} of {args.repeat}", flush=True)
            rounds.append({name: measure(catalogue[name], work, args) for name in args.peers.split(",")})
    finally:
        upstream.stop()
    doc["loadavg_end"] = _loadavg()
    results = combine(rounds)
    doc["peers"] = results
    doc["rounds"] = rounds
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / f"{args.name}.json").write_text(json.dumps(doc, indent=2) + "\n")
    write_markdown(doc, args.out / f"{args.name}.md")
    try:
        plot(results, args.plot, args.rate)
    except ImportError:
        print(
            "no plot: matplotlib missing (pip install -r bench/requirements.txt; bench/run_proxy.sh does)",
            file=sys.stderr,
        )
    else:
        print(f"wrote {args.plot}")
    print(f"wrote {args.out / (args.name + '.md')} and {args.out / (args.name + '.json')}")
    shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
