"""Numbers, the machine, result files, /proc sampling and API-server metrics of the operator benchmarks.

Everything talks to 127.0.0.0/8 only.
"""

from __future__ import annotations

import contextlib
import datetime
import json
import math
import os
import platform
import shlex
import subprocess
import sys
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from prometheus_client.parser import text_string_to_metric_families

REPO = Path(__file__).resolve().parents[2]
RESULTS = REPO / "bench" / "results"
CLK_TCK = os.sysconf("SC_CLK_TCK")


# -- numbers -----------------------------------------------------------------------------------------


def percentile(values: Sequence[float], q: float) -> float:
    """Linear interpolation between closest ranks (numpy's default); NaN for no values."""
    if not values:
        return math.nan
    ordered = sorted(values)
    pos = (len(ordered) - 1) * q / 100
    lo, hi = math.floor(pos), math.ceil(pos)
    return ordered[lo] + (ordered[hi] - ordered[lo]) * (pos - lo)


def summary(values: Sequence[float], *, scale: float = 1.0, digits: int = 3) -> dict[str, Any]:
    def r(x: float) -> float | None:
        return None if math.isnan(x) else round(x * scale, digits)

    return {
        "n": len(values),
        "p50": r(percentile(values, 50)),
        "p90": r(percentile(values, 90)),
        "p95": r(percentile(values, 95)),
        "p99": r(percentile(values, 99)),
        "max": r(max(values)) if values else None,
        "mean": r(sum(values) / len(values)) if values else None,
    }


# -- the machine and result files ----------------------------------------------------------------


def machine_facts() -> dict[str, Any]:
    cpu = ""
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    commit = subprocess.run(
        ["git", "-C", str(REPO), "rev-parse", "--short", "HEAD"], capture_output=True, text=True, check=False
    ).stdout.strip()
    return {
        "nproc": os.cpu_count(),
        "cpu": cpu,
        "memory_gib": round(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30, 1),
        "loadavg_start": Path("/proc/loadavg").read_text().split()[:3],
        "python": platform.python_version(),
        "kernel": platform.release(),
        "commit": commit,
        "date": datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
    }


def command_line() -> str:
    return " ".join([".venv/bin/python", *(shlex.quote(a) for a in sys.argv)])


def write_results(
    stem: str, *, title: str, machine: dict[str, Any], body_md: str, data: dict[str, Any]
) -> None:
    machine = {**machine, "loadavg_end": Path("/proc/loadavg").read_text().split()[:3]}
    RESULTS.mkdir(parents=True, exist_ok=True)
    cmd = command_line()
    facts = (
        f"nproc {machine['nproc']} ({machine['cpu']}), {machine['memory_gib']} GiB, "
        f"Python {machine['python']}, "
        f"commit {machine['commit']}, {machine['date']}; load average (1/5/15 min) at start "
        f"{' '.join(machine['loadavg_start'])}, at end {' '.join(machine['loadavg_end'])}"
    )
    md = f"Command: `{cmd}`\n\n# {title}\n\nMachine: {facts}.\n\n{body_md.strip()}\n"
    (RESULTS / f"{stem}.md").write_text(md)
    (RESULTS / f"{stem}.json").write_text(
        json.dumps({"command": cmd, "machine": machine, **data}, indent=2, sort_keys=False) + "\n"
    )
    print(md)


def md_table(headers: Sequence[str], rows: Iterable[Sequence[Any]]) -> str:
    def cell(v: Any) -> str:
        if v is None or (isinstance(v, float) and math.isnan(v)):
            return "-"
        return str(v)

    out = ["| " + " | ".join(headers) + " |", "|" + "|".join("---" for _ in headers) + "|"]
    out += ["| " + " | ".join(cell(v) for v in row) + " |" for row in rows]
    return "\n".join(out)


def log(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


# -- /proc ---------------------------------------------------------------------------------------------


def cpu_seconds(pid: int) -> float:
    """user + system CPU of a process (all its threads), in seconds."""
    fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
    return (int(fields[11]) + int(fields[12])) / CLK_TCK  # utime, stime (fields 14 and 15)


def memory_mib(pid: int) -> tuple[float, float]:
    """(VmRSS, VmHWM) in MiB."""
    rss = hwm = 0.0
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            rss = int(line.split()[1]) / 1024
        elif line.startswith("VmHWM:"):
            hwm = int(line.split()[1]) / 1024
    return rss, hwm


def udp_drops(port: int) -> int:
    """Datagrams the kernel dropped for the UDP socket(s) bound to `port` (receive buffer full)."""
    total = 0
    for table in ("/proc/net/udp", "/proc/net/udp6"):
        with contextlib.suppress(OSError):
            for line in Path(table).read_text().splitlines()[1:]:
                fields = line.split()
                if int(fields[1].rsplit(":", 1)[1], 16) == port:
                    total += int(fields[-1])
    return total


def loadavg() -> list[str]:
    return Path("/proc/loadavg").read_text().split()[:3]


@dataclass
class CpuWindow:
    """CPU and wall time of one process between `start()` and `stop()`."""

    pid: int
    cpu0: float = 0.0
    wall0: float = 0.0
    cpu: float = 0.0
    wall: float = 0.0

    def start(self) -> CpuWindow:
        self.cpu0, self.wall0 = cpu_seconds(self.pid), time.monotonic()
        return self

    def stop(self) -> CpuWindow:
        self.cpu = cpu_seconds(self.pid) - self.cpu0
        self.wall = time.monotonic() - self.wall0
        return self

    @property
    def percent(self) -> float:
        return round(100 * self.cpu / self.wall, 1) if self.wall else math.nan


# -- API-server metrics --------------------------------------------------------------------------------


def parse_metrics(text: str) -> dict[str, list[tuple[dict[str, str], float]]]:
    out: dict[str, list[tuple[dict[str, str], float]]] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            out.setdefault(sample.name, []).append((dict(sample.labels), float(sample.value)))
    return out


def metric_sum(metrics: dict[str, list[tuple[dict[str, str], float]]], name: str, **labels: str) -> float:
    return sum(v for lab, v in metrics.get(name, ()) if all(lab.get(k) == want for k, want in labels.items()))


def request_counts(metrics: dict[str, list[tuple[dict[str, str], float]]]) -> dict[str, float]:
    """The API-server request counters the operator benchmarks care about."""
    m = "apiserver_request_total"
    return {
        "status_patches": metric_sum(
            metrics, m, resource="circuitbreakerpolicies", subresource="status", verb="PATCH"
        ),
        "policy_patches": metric_sum(
            metrics, m, resource="circuitbreakerpolicies", subresource="", verb="PATCH"
        ),
        "tokenreviews": metric_sum(metrics, m, resource="tokenreviews", verb="POST"),
        "events": metric_sum(metrics, m, resource="events", verb="POST")
        + metric_sum(metrics, m, resource="events", verb="PATCH"),
        "configmap_writes": metric_sum(metrics, m, resource="configmaps", verb="PATCH")
        + metric_sum(metrics, m, resource="configmaps", verb="PUT")
        + metric_sum(metrics, m, resource="configmaps", verb="POST"),
        "all": metric_sum(metrics, m),
    }


def histogram_delta(
    before: dict[str, list[tuple[dict[str, str], float]]],
    after: dict[str, list[tuple[dict[str, str], float]]],
    name: str,
    **labels: str,
) -> list[tuple[float, float]]:
    """Cumulative (le, count) buckets of a histogram between two scrapes, summed over matching series."""

    def buckets(metrics: dict[str, list[tuple[dict[str, str], float]]]) -> dict[float, float]:
        out: dict[float, float] = {}
        for lab, value in metrics.get(name + "_bucket", ()):
            if all(lab.get(k) == v for k, v in labels.items()):
                le = float(lab["le"])
                out[le] = out.get(le, 0.0) + value
        return out

    b0, b1 = buckets(before), buckets(after)
    return sorted((le, b1[le] - b0.get(le, 0.0)) for le in b1)


def histogram_quantile(q: float, buckets: Sequence[tuple[float, float]]) -> float:
    """Prometheus' histogram_quantile: linear interpolation inside the bucket holding the rank."""
    if not buckets or buckets[-1][1] <= 0:
        return math.nan
    total = buckets[-1][1]
    rank = q * total
    prev_le, prev_count = 0.0, 0.0
    for le, count in buckets:
        if count >= rank:
            if math.isinf(le):
                return prev_le
            if count == prev_count:
                return le
            return prev_le + (le - prev_le) * (rank - prev_count) / (count - prev_count)
        prev_le, prev_count = le, count
    return buckets[-1][0]
