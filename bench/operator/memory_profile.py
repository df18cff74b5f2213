"""Where the operator's memory goes: tracemalloc inside `breakwater operator` (bench/operator/traced_cli.py),
dumped with the pods and policies in place but not reporting, and again once they all report.

Not a timed benchmark (tracemalloc slows Python down and adds its own overhead); it attributes the
RSS growth that scale.py measures.

    .venv/bin/python bench/operator/memory_profile.py --namespaces 10
    .venv/bin/python bench/operator/memory_profile.py --namespaces 30 --depth 8 \
        --results operator-memory-deep
"""

from __future__ import annotations

import argparse
import asyncio
import os
import signal
import tempfile
import time
from pathlib import Path
from typing import Any

import opbench as ob
import scale

HERE = Path(__file__).resolve().parent


async def dump(bench: ob.Bench, out: Path) -> str:
    await asyncio.to_thread(out.unlink, missing_ok=True)
    os.kill(bench.operator.pid, signal.SIGUSR1)
    for _ in range(6000):  # a deep snapshot of a big heap takes a while
        await asyncio.sleep(0.1)
        text = await asyncio.to_thread(_read, out)
        if text.endswith("\n"):
            return text
    raise RuntimeError("no tracemalloc dump from the operator")


def _read(path: Path) -> str:
    try:
        return path.read_text()
    except OSError:
        return ""


async def phase(bench: ob.Bench, out: Path, name: str) -> dict[str, Any]:
    return {"phase": name, "rss_mib": ob.memory_mib(bench.operator.pid)[0], "dump": await dump(bench, out)}


async def main(args: argparse.Namespace) -> None:
    machine = ob.machine_facts()
    out = Path(tempfile.mkdtemp(prefix="breakwater-trace-")) / "trace.txt"
    os.environ["BREAKWATER_TRACE_OUT"] = str(out)
    os.environ["BREAKWATER_TRACE_DEPTH"] = str(args.depth)
    bench = ob.Bench.start(big=True, launcher=(str(HERE / "traced_cli.py"),))
    phases: list[dict[str, Any]] = []
    try:
        api = ob.Api(bench.cp)
        fleet = ob.SimFleet(bench.operator.report_url, bench.operator.ca_pem(), [], interval=5.0)
        try:
            phases.append(await phase(bench, out, "operator started"))
            await ob.gather_limited(
                (scale.add_namespace(api, bench.cp.node_name, i, 10, 10) for i in range(args.namespaces)), 4
            )
            pods = args.namespaces * 100
            await scale.wait_all_pods(api, pods, limit=600)
            await asyncio.sleep(10)
            phases.append(await phase(bench, out, f"{pods // 10} policies, {pods} pods, no reports"))
            sims = await scale.new_sims(api, set())
            fleet.pods.extend(sims)
            fleet.start(sims)
            started = time.monotonic()
            await scale.settle(fleet, 30, 150)
            ob.log(f"reporting for {time.monotonic() - started:.0f} s")
            phases.append(await phase(bench, out, f"{len(sims)} pods reporting every 5 s"))
        finally:
            await fleet.stop()
            await api.close()
    finally:
        bench.close()
    body = "\n\n".join(
        f"## {p['phase']}: RSS {p['rss_mib']:.0f} MiB\n\n```\n{p['dump'].strip()}\n```" for p in phases
    )
    title = "Operator: where the memory goes (tracemalloc)"
    ob.write_results(args.results, title=title, machine=machine, body_md=body, data={"phases": phases})


if __name__ == "__main__":
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--namespaces", type=int, default=10, help="each: 10 policies x 10 pods")
    parser.add_argument(
        "--depth", type=int, default=1, help="frames kept per block (more: growth listed by traceback too)"
    )
    parser.add_argument("--results", default="operator-memory", help="name of the file under bench/results/")
    asyncio.run(main(parser.parse_args()))
