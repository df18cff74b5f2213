"""Issue 6 benchmark: breaker transition -> policy status latency, with 1, 10 (real) and 100 (simulated)
sidecars, and the status write rate while breakers flip.

Real sidecars: `breakwater.testing.sidecars.SidecarFleet` runs one `breakwater proxy` per injected kwok
pod (bound to the pod IP, pod-bound token, default 5 s report interval) in front of a
`FlakyUpstream`. A cycle makes the upstream fail, sends 3 calls through every sidecar at once
(consecutiveFailures 3: each trips), and records the trip as the moment the last tripping call
returned; then the upstream recovers, after the 1 s open duration one call through each sidecar
closes it again (HalfOpen -> Closed). Simulated sidecars (`opbench.SimFleet`): real-shaped reports,
real pod-bound tokens of real kwok pods, 5 s summaries; a trip is a transition report sent at once.

Latency = from the trip (or the close) until a watch on the policy delivers a status whose upstream
shows it on every pod (`open == N`, state Open; then `closed == N`, state Closed).

    .venv/bin/python bench/operator/status_latency.py --real 1,10 --sim 10,100 --cycles 15
"""

from __future__ import annotations

import argparse
import asyncio
import random
import time
from dataclasses import dataclass, field
from typing import Any

import aiohttp
import opbench as ob

from breakwater.testing.sidecars import SidecarFleet
from breakwater.testing.upstream import FlakyUpstream


@dataclass
class StatusWatch:
    """Every upstream status the watch delivered for one policy, with arrival times."""

    api: ob.Api
    namespace: str
    name: str
    seen: list[tuple[float, dict[str, Any]]] = field(default_factory=list)
    changed: asyncio.Event = field(default_factory=asyncio.Event)
    task: asyncio.Task[None] | None = None

    async def _run(self) -> None:
        path = f"{ob.GROUP_PATH}/namespaces/{self.namespace}/circuitbreakerpolicies"
        path += f"?fieldSelector=metadata.name={self.name}"
        while True:
            with_rv = await self.api.get(path)
            rv = with_rv["metadata"]["resourceVersion"]
            try:
                async for now, event in self.api.watch(path, resource_version=rv):
                    for up in ((event.get("object") or {}).get("status") or {}).get("upstreams") or ():
                        self.seen.append((now, up))
                        self.changed.set()
            except (aiohttp.ClientError, TimeoutError):
                await asyncio.sleep(0.1)

    def start(self) -> None:
        self.task = asyncio.create_task(self._run())

    async def stop(self) -> None:
        if self.task is not None:
            self.task.cancel()

    async def wait_for(self, pred: Any, *, since: float, limit: float = 30) -> float:
        """Arrival time of the first status after `since` that satisfies `pred`."""
        deadline = time.monotonic() + limit
        while time.monotonic() < deadline:
            for now, up in self.seen:
                if now >= since and pred(up):
                    return now
            self.changed.clear()
            try:
                async with asyncio.timeout(max(0.01, deadline - time.monotonic())):
                    await self.changed.wait()
            except TimeoutError:
                break
        last = self.seen[-1][1] if self.seen else None
        raise RuntimeError(f"status never satisfied the condition within {limit} s (last: {last})")


async def call(session: aiohttp.ClientSession, url: str) -> tuple[int, float]:
    async with session.get(url) as resp:
        await resp.read()
        return resp.status, time.monotonic()


async def run_real(bench: ob.Bench, api: ob.Api, size: int, cycles: int) -> dict[str, Any]:
    namespace = f"real-{size}"
    await api.namespace(namespace)
    await api.wait_service_account(namespace)
    upstream = FlakyUpstream().start()
    fleet = SidecarFleet(
        kubectl=bench.cp.binary("kubectl"),
        kubeconfig=bench.cp.kubeconfig,
        namespace=namespace,
        report_interval=5.0,
    )
    try:
        await ob.create_policy(
            api, namespace, ob.policy_body("payments", app="checkout", port=upstream.port, open_for="1s")
        )
        await api.post(
            f"/apis/apps/v1/namespaces/{namespace}/deployments",
            ob.deployment_body("checkout", app="checkout", node=bench.cp.node_name, replicas=size),
        )
        await ob.wait_pods(api, namespace, size, interval=0.3)
        await asyncio.to_thread(fleet.sync)
        await asyncio.to_thread(fleet.wait_ready, 60)
        urls = [s.url(15210) + "/pay" for s in fleet.sidecars.values()]
        ob.log(f"{size} real sidecars ready")
        watch = StatusWatch(api, namespace, "payments")
        watch.start()
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=10)) as session:
            for url in urls:
                await call(session, url)
            await watch.wait_for(
                lambda u: u.get("state") == "Closed" and u.get("closed") == size, since=0, limit=60
            )
            result = await cycles_of(
                bench, api, watch, size, cycles, trip=lambda: trip_real(session, upstream, urls),
                recover=lambda: recover_real(session, upstream, urls),
            )  # fmt: skip
        await watch.stop()
        return result
    finally:
        await asyncio.to_thread(fleet.stop)
        upstream.stop()


async def trip_real(session: aiohttp.ClientSession, upstream: FlakyUpstream, urls: list[str]) -> float:
    upstream.failing = True

    async def three(url: str) -> float:
        last = 0.0
        for _ in range(3):
            status, last = await call(session, url)
            if status != 500:
                raise RuntimeError(f"expected 500 from the failing upstream, got {status}")
        return last

    return max(await asyncio.gather(*(three(u) for u in urls)))


async def recover_real(session: aiohttp.ClientSession, upstream: FlakyUpstream, urls: list[str]) -> float:
    upstream.failing = False
    await asyncio.sleep(1.1)  # the open duration
    got = await asyncio.gather(*(call(session, u) for u in urls))
    if any(status != 200 for status, _ in got):
        raise RuntimeError(f"trial calls did not all succeed: {[s for s, _ in got]}")
    return max(t for _, t in got)


async def run_sim(bench: ob.Bench, api: ob.Api, size: int, cycles: int) -> dict[str, Any]:
    namespace = f"sim-{size}"
    await api.namespace(namespace)
    await api.wait_service_account(namespace)
    await ob.create_policy(api, namespace, ob.policy_body("payments", app="checkout", open_for="1s"))
    await api.post(
        f"/apis/apps/v1/namespaces/{namespace}/deployments",
        ob.deployment_body("checkout", app="checkout", node=bench.cp.node_name, replicas=size),
    )
    await ob.wait_pods(api, namespace, size, interval=0.3)
    sims = await ob.sim_pods_for(api, namespace, policy_of={"checkout": f"{namespace}/payments"})
    fleet = ob.SimFleet(bench.operator.report_url, bench.operator.ca_pem(), sims, interval=5.0)
    fleet.start()
    ob.log(f"{size} simulated sidecars reporting")
    watch = StatusWatch(api, namespace, "payments")
    watch.start()
    try:
        await watch.wait_for(
            lambda u: u.get("state") == "Closed" and u.get("closed") == size, since=0, limit=60
        )

        async def flip(*states: str) -> float:
            for s in sims:
                for state in states:
                    s.transition(state)
                fleet.kick(s)
            return time.monotonic()

        result = await cycles_of(
            bench, api, watch, size, cycles, trip=lambda: flip("Open"),
            recover=lambda: flip("HalfOpen", "Closed"),
        )  # fmt: skip
        result["report_post_ms"] = ob.summary(fleet.post_latencies, scale=1000, digits=1)
        result["report_errors"] = fleet.errors
        return result
    finally:
        await watch.stop()
        await fleet.stop()


async def cycles_of(
    bench: ob.Bench, api: ob.Api, watch: StatusWatch, size: int, cycles: int, *, trip: Any, recover: Any
) -> dict[str, Any]:
    opened, closed = [], []
    m0 = ob.parse_metrics(await api.metrics_text())
    cpu = ob.CpuWindow(bench.operator.pid).start()
    for _ in range(cycles):
        # A random pause, so the trip does not fall at the same phase of the 1 s status timer each time.
        await asyncio.sleep(random.uniform(0, 1))
        tripped = await trip()
        seen = await watch.wait_for(
            lambda u: u.get("state") == "Open" and u.get("open") == size, since=tripped
        )
        opened.append(seen - tripped)
        await asyncio.sleep(0.3 + random.uniform(0, 1))
        recovered = await recover()
        seen = await watch.wait_for(
            lambda u: u.get("state") == "Closed" and u.get("closed") == size, since=recovered
        )
        closed.append(seen - recovered)
        await asyncio.sleep(0.3)
    cpu.stop()
    m1 = ob.parse_metrics(await api.metrics_text())
    patches = ob.request_counts(m1)["status_patches"] - ob.request_counts(m0)["status_patches"]
    both = opened + closed
    out = {
        "sidecars": size,
        "open_seconds": ob.summary(opened),
        "closed_seconds": ob.summary(closed),
        "all_seconds": ob.summary(both),
        "status_patches": int(patches),
        "window_seconds": round(cpu.wall, 1),
        "status_writes_per_second": round(patches / cpu.wall, 2),
        "operator_cpu_percent": cpu.percent,
    }
    ob.log(f"{size} sidecars: {out['all_seconds']}, {out['status_writes_per_second']} writes/s")
    return out


async def main(args: argparse.Namespace) -> None:
    machine = ob.machine_facts()
    bench = ob.Bench.start(big=True)
    results: list[dict[str, Any]] = []
    try:
        api = ob.Api(bench.cp)
        try:
            for size in args.real:
                results.append({"kind": "real", **await run_real(bench, api, size, args.cycles)})
            for size in args.sim:
                results.append({"kind": "simulated", **await run_sim(bench, api, size, args.cycles)})
            rss, hwm = ob.memory_mib(bench.operator.pid)
        finally:
            await api.close()
    finally:
        bench.close()
    rows = []
    for r in results:
        a, o, c = r["all_seconds"], r["open_seconds"], r["closed_seconds"]
        rows.append([
            r["sidecars"], r["kind"], a["n"], a["p50"], a["p95"], a["max"], o["p50"], o["p95"], c["p50"],
            c["p95"], r["status_writes_per_second"], f"{r['operator_cpu_percent']}%",
        ])  # fmt: skip
    worst = max((r["all_seconds"]["p95"] for r in results), default=0)
    body = f"""
Each cycle trips every sidecar's breaker, waits for the status to show Open on all of them, recovers,
and waits for Closed on all; {args.cycles} cycles per size, so 2 x {args.cycles} transitions each.
Latency is measured from the moment the last sidecar tripped (or closed) to the watch event carrying
the status that shows it for every pod. The operator's status timer runs once a second per policy.

{ob.md_table(HEADERS, rows)}

Target: p95 ≤ 2 s at 100 sidecars — worst p95 here {worst} s.
Status writes per second: status PATCHes counted by the API server over the row's cycles, all
policies (those of earlier rows are idle by then, and write nothing), while the row's policy flips
state about every 1.5 s (target ≤ 1 write/s/policy).
Operator RSS at the end: {rss:.0f} MiB (peak {hwm:.0f} MiB).
"""
    data = {
        "results": results,
        "cycles": args.cycles,
        "operator_rss_mib": round(rss, 1),
        "operator_peak_rss_mib": round(hwm, 1),
    }
    ob.write_results(
        "operator-status-latency",
        title="Operator: transition → status latency",
        machine=machine,
        body_md=body,
        data=data,
    )


HEADERS = [
    "sidecars", "kind", "samples", "p50 s", "p95 s", "max s", "Open p50", "Open p95", "Closed p50",
    "Closed p95", "status writes/s", "operator CPU",
]  # fmt: skip


def sizes(text: str) -> list[int]:
    return [int(x) for x in text.split(",") if x]


if __name__ == "__main__":
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--real", type=sizes, default=[1, 10], help="sizes with real sidecar processes")
    parser.add_argument("--sim", type=sizes, default=[10, 100], help="sizes with simulated sidecars")
    parser.add_argument("--cycles", type=int, default=15)
    asyncio.run(main(parser.parse_args()))
