"""Issue 5 benchmarks: sidecar-injection webhook latency, and policy apply -> Accepted=True.

Webhook: pods are created one at a time through the API (client-side create latency), in three
namespaces taken in turn so background load is shared: `inject` (opted in, a policy selects the pod:
the webhook is called and injects), `nomatch` (opted in, no policy selects the pod: the webhook is
called and returns no patch) and `plain` (not opted in: the API server does not call the webhook). The
The same with {args.concurrency} creations in flight at once ({cpu_conc.wall:.0f} s, operator CPU
{cpu_conc.percent}%), ms:

{ob.md_table(["namespace", "pods", "p50", "p90", "p99", "max"], rows_conc)}

Added by the webhook at concurrency {args.concurrency}: p50 **{added_conc["p50"]} ms**,
p90 {added_conc["p90"]} ms, p99 **{added_conc["p99"]} ms**.

API server's own histogram `apiserver_admission_webhook_admission_duration_seconds` is read before and
after. Then a Deployment is scaled to `--burst` replicas at once (kube-controller-manager creates the
pods concurrently) and the histogram is read again.

Policies: `--policies` policies are applied one by one with `kubectl apply`; a watch on the policies
records when each first shows Accepted=True. Then the same number is applied in one `kubectl apply`
(a burst) and the time until the last is Accepted is recorded.

    .venv/bin/python bench/operator/admission.py --pods 600 --policies 30 --burst 500
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import time
from typing import Any

import opbench as ob

from breakwater.injection.pod import sidecar_of

HIST = "apiserver_admission_webhook_admission_duration_seconds"
ARMS = ("inject", "nomatch", "plain")


async def create_pods(
    api: ob.Api, node: str, per_arm: int, prefix: str = "pod", concurrency: int = 1
) -> dict[str, list[float]]:
    latencies: dict[str, list[float]] = {arm: [] for arm in ARMS}
    injected: dict[str, int] = {arm: 0 for arm in ARMS}

    async def one(i: int) -> None:
        arm = ARMS[i % len(ARMS)]
        app = "checkout" if arm != "nomatch" else "other"
        body = {"apiVersion": "v1", "kind": "Pod", **ob.pod_template(app, node)}
        body["metadata"]["name"] = f"{prefix}-{i:05d}"
        started = time.monotonic()
        got = await api.post(f"/api/v1/namespaces/{arm}/pods", body)
        latencies[arm].append(time.monotonic() - started)
        if sidecar_of(got) is not None:
            injected[arm] += 1

    await ob.gather_limited((one(i) for i in range(per_arm * len(ARMS))), concurrency)
    ob.log(f"created pods ({concurrency} at a time); injected per namespace: {injected}")
    if injected["inject"] != per_arm or injected["nomatch"] or injected["plain"]:
        raise RuntimeError(f"unexpected injection counts {injected}")
    return latencies


async def watch_accepted(
    api: ob.Api, namespace: str, seen: dict[str, float], rv: str, changed: asyncio.Event
) -> None:
    async for now, event in api.watch(
        f"{ob.GROUP_PATH}/namespaces/{namespace}/circuitbreakerpolicies", resource_version=rv
    ):
        obj = event.get("object") or {}
        name = (obj.get("metadata") or {}).get("name", "")
        for cond in (obj.get("status") or {}).get("conditions") or ():
            if cond.get("type") == "Accepted" and cond.get("status") == "True" and name not in seen:
                seen[name] = now
                changed.set()


async def until(pred: Any, changed: asyncio.Event, limit: float) -> None:
    """Return when `pred()` holds (re-checked whenever `changed` is set) or after `limit` seconds."""
    deadline = time.monotonic() + limit
    while not pred() and time.monotonic() < deadline:
        changed.clear()
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(changed.wait(), deadline - time.monotonic())


async def kubectl_apply(cp: ob.BenchControlPlane, namespace: str, manifest: str) -> float:
    started = time.monotonic()
    proc = await asyncio.create_subprocess_exec(
        cp.binary("kubectl"),
        f"--kubeconfig={cp.kubeconfig}",
        "apply",
        "-n",
        namespace,
        "-f",
        "-",
        stdin=asyncio.subprocess.PIPE,
        stdout=asyncio.subprocess.DEVNULL,
        stderr=asyncio.subprocess.PIPE,
    )
    _, err = await proc.communicate(manifest.encode())
    if proc.returncode != 0:
        raise RuntimeError(f"kubectl apply: {err.decode()}")
    return time.monotonic() - started


async def policies_bench(bench: ob.Bench, api: ob.Api, count: int) -> dict[str, Any]:
    results: dict[str, Any] = {}
    for label, namespace in (("sequential", "policies-seq"), ("burst", "policies-burst")):
        await api.namespace(namespace)
        listing = await api.get(f"{ob.GROUP_PATH}/namespaces/{namespace}/circuitbreakerpolicies")
        seen: dict[str, float] = {}
        changed = asyncio.Event()
        watcher = asyncio.create_task(
            watch_accepted(api, namespace, seen, listing["metadata"]["resourceVersion"], changed)
        )
        await asyncio.sleep(0.5)
        latencies, apply_times = [], []
        names = [f"policy-{i:03d}" for i in range(count)]
        if label == "sequential":
            for name in names:
                started = time.monotonic()
                apply_times.append(
                    await kubectl_apply(bench.cp, namespace, json.dumps(ob.policy_body(name, app=name)))
                )
                await until(lambda: name in seen, changed, 30)  # noqa: B023 (awaited here, in this iteration)
                if name not in seen:
                    raise RuntimeError(f"{name} not Accepted within 30 s")
                latencies.append(seen[name] - started)
                await asyncio.sleep(0.2)
        else:
            docs = {"apiVersion": "v1", "kind": "List", "items": [ob.policy_body(n, app=n) for n in names]}
            started = time.monotonic()
            apply_times.append(await kubectl_apply(bench.cp, namespace, json.dumps(docs)))
            await until(lambda: len(seen) >= count, changed, 120)  # noqa: B023 (awaited in this iteration)
            latencies = [seen[n] - started for n in names if n in seen]
            if len(latencies) < count:
                raise RuntimeError(f"burst: only {len(latencies)}/{count} Accepted within 120 s")
        watcher.cancel()
        results[label] = {
            "accepted_seconds": ob.summary(latencies),
            "kubectl_apply_seconds": ob.summary(apply_times),
            "raw_accepted_seconds": [round(x, 4) for x in latencies],
        }
        ob.log(f"policies {label}: {results[label]['accepted_seconds']}")
    return results


async def main(args: argparse.Namespace) -> None:
    machine = ob.machine_facts()
    bench = ob.Bench.start(big=True)
    try:
        await run(bench, args, machine)
    finally:
        bench.close()


async def run(bench: ob.Bench, args: argparse.Namespace, machine: dict[str, Any]) -> None:
    api = ob.Api(bench.cp)
    try:
        for arm in ARMS:
            await api.namespace(arm, opted_in=arm != "plain")
            await api.wait_service_account(arm)
        for arm in ("inject", "nomatch"):
            await api.post(
                f"{ob.GROUP_PATH}/namespaces/{arm}/circuitbreakerpolicies",
                ob.policy_body("payments", app="checkout"),
            )
        await asyncio.sleep(3)  # both policies rendered and cached by the operator

        # warm-up: connections, the operator's caches, the API server's webhook client
        await create_pods(api, bench.cp.node_name, 5, prefix="warm")
        for arm in ARMS:
            await api.request("DELETE", f"/api/v1/namespaces/{arm}/pods", ok=(404,))
        await asyncio.sleep(2)

        m0 = ob.parse_metrics(await api.metrics_text())
        cpu = ob.CpuWindow(bench.operator.pid).start()
        started = time.monotonic()
        latencies = await create_pods(api, bench.cp.node_name, args.pods)
        wall = time.monotonic() - started
        cpu.stop()
        m1 = ob.parse_metrics(await api.metrics_text())
        hist = ob.histogram_delta(m0, m1, HIST, operation="CREATE", type="admit")
        seq_server = {q: ob.histogram_quantile(q / 100, hist) for q in (50, 90, 99)}
        seq_calls = hist[-1][1] if hist else 0
        ob.log(f"sequential: {seq_calls:.0f} webhook calls, server-side {seq_server}")

        # concurrent: the same, `--concurrency` creations in flight at once
        m4 = ob.parse_metrics(await api.metrics_text())
        cpu_conc = ob.CpuWindow(bench.operator.pid).start()
        conc = await create_pods(
            api, bench.cp.node_name, args.pods, prefix="conc", concurrency=args.concurrency
        )
        cpu_conc.stop()
        m5 = ob.parse_metrics(await api.metrics_text())
        hist_conc = ob.histogram_delta(m4, m5, HIST, operation="CREATE", type="admit")
        conc_server = {q: ob.histogram_quantile(q / 100, hist_conc) for q in (50, 90, 99)}

        # burst: a Deployment scaled from 0 to --burst replicas; kube-controller-manager creates them
        await api.namespace("burst")
        await api.wait_service_account("burst")
        await api.post(
            f"{ob.GROUP_PATH}/namespaces/burst/circuitbreakerpolicies",
            ob.policy_body("payments", app="checkout"),
        )
        await asyncio.sleep(2)
        m2 = ob.parse_metrics(await api.metrics_text())
        cpu_burst = ob.CpuWindow(bench.operator.pid).start()
        started = time.monotonic()
        await api.post(
            "/apis/apps/v1/namespaces/burst/deployments",
            ob.deployment_body("checkout", app="checkout", node=bench.cp.node_name, replicas=args.burst),
        )
        burst_wall = await ob.wait_pods(api, "burst", args.burst, limit=300, interval=0.5)
        cpu_burst.stop()
        m3 = ob.parse_metrics(await api.metrics_text())
        hist_burst = ob.histogram_delta(m2, m3, HIST, operation="CREATE", type="admit")
        burst_server = {q: ob.histogram_quantile(q / 100, hist_burst) for q in (50, 90, 99)}
        ob.log(
            f"burst of {args.burst}: all injected and running in {burst_wall:.1f} s, server {burst_server}"
        )

        policies = await policies_bench(bench, api, args.policies)
        rss, hwm = ob.memory_mib(bench.operator.pid)
    finally:
        await api.close()

    client = {arm: ob.summary(latencies[arm], scale=1000, digits=1) for arm in ARMS}
    added = {
        q: round((client["inject"][q] or 0) - (client["plain"][q] or 0), 1) for q in ("p50", "p90", "p99")
    }
    client_conc = {arm: ob.summary(conc[arm], scale=1000, digits=1) for arm in ARMS}
    added_conc = {
        q: round((client_conc["inject"][q] or 0) - (client_conc["plain"][q] or 0), 1)
        for q in ("p50", "p90", "p99")
    }
    buckets = [(le, int(c)) for le, c in hist]
    data = {
        "pods_per_namespace": args.pods,
        "client_create_ms": client,
        "webhook_added_ms": added,
        "server_webhook_ms_sequential": {f"p{q}": round(v * 1000, 1) for q, v in seq_server.items()},
        "server_webhook_calls_sequential": int(seq_calls),
        "server_webhook_buckets_sequential": buckets,
        "sequential_wall_seconds": round(wall, 1),
        "concurrent": {
            "concurrency": args.concurrency,
            "client_create_ms": client_conc,
            "webhook_added_ms": added_conc,
            "server_webhook_ms": {f"p{q}": round(v * 1000, 1) for q, v in conc_server.items()},
            "server_webhook_buckets": [(le, int(c)) for le, c in hist_conc],
            "operator_cpu_percent": cpu_conc.percent,
            "wall_seconds": round(cpu_conc.wall, 1),
        },
        "operator_cpu_percent_sequential": cpu.percent,
        "burst": {
            "replicas": args.burst,
            "all_running_seconds": round(burst_wall, 1),
            "server_webhook_ms": {f"p{q}": round(v * 1000, 1) for q, v in burst_server.items()},
            "server_webhook_calls": int(hist_burst[-1][1]) if hist_burst else 0,
            "server_webhook_buckets": [(le, int(c)) for le, c in hist_burst],
            "operator_cpu_percent": cpu_burst.percent,
        },
        "policies": policies,
        "operator_rss_mib": round(rss, 1),
        "operator_peak_rss_mib": round(hwm, 1),
    }
    rows = [
        [
            arm,
            {"inject": "called, injects", "nomatch": "called, no patch", "plain": "not called"}[arm],
            client[arm]["n"],
            client[arm]["p50"],
            client[arm]["p90"],
            client[arm]["p99"],
            client[arm]["max"],
        ]
        for arm in ARMS
    ]
    rows_conc = [
        [arm, *(client_conc[arm][k] for k in ("n", "p50", "p90", "p99", "max"))]
        for arm in ARMS
    ]  # fmt: skip
    server_rows = [
        ["sequential (1 at a time)", int(seq_calls), *(round(v * 1000, 1) for v in seq_server.values()),
         f"{cpu.percent}%"],
        [f"{args.concurrency} at a time", int(hist_conc[-1][1]) if hist_conc else 0,
         *(round(v * 1000, 1) for v in conc_server.values()), f"{cpu_conc.percent}%"],
        [f"burst: Deployment 0 → {args.burst}", data["burst"]["server_webhook_calls"],
         *(round(v * 1000, 1) for v in burst_server.values()), f"{cpu_burst.percent}%"],
    ]  # fmt: skip
    server_table = ob.md_table(["load", "calls", "p50 ms", "p90 ms", "p99 ms", "operator CPU"], server_rows)
    seq = policies["sequential"]["accepted_seconds"]
    burst = policies["burst"]["accepted_seconds"]
    body = f"""
## Webhook admission latency

Pods created one at a time through the API (aiohttp, admin certificate, kept-alive connection), the
three namespaces taken in turn; {args.pods} pods each, {3 * args.pods} in all, in {wall:.0f} s.

Client-side `POST /api/v1/namespaces/NS/pods` latency, ms:

{ob.md_table(["namespace", "webhook", "pods", "p50", "p90", "p99", "max"], rows)}

Added by the webhook (inject - plain): p50 **{added["p50"]} ms**, p90 {added["p90"]} ms, p99 **{
        added["p99"]
    } ms**.

The same with {args.concurrency} creations in flight at once ({cpu_conc.wall:.0f} s, operator CPU
{cpu_conc.percent}%), ms:

{ob.md_table(["namespace", "pods", "p50", "p90", "p99", "max"], rows_conc)}

Added by the webhook at concurrency {args.concurrency}: p50 **{added_conc["p50"]} ms**, p90 {
        added_conc["p90"]
    } ms,
p99 **{added_conc["p99"]} ms**.

API server's own histogram `{HIST}` (operation CREATE, type admit; {int(seq_calls)} calls, quantiles
interpolated inside the histogram's buckets, so only as fine as the buckets
{", ".join(f"{le:g}" for le, _ in hist[:8])} … s):

{server_table}

Burst: all {args.burst} pods created, injected and Running (kwok) {burst_wall:.1f} s after the
Deployment was created. Bucket counts (le → cumulative calls), sequential: {buckets};
burst: {data["burst"]["server_webhook_buckets"]}.

## Policy apply → Accepted=True

Time from starting `kubectl apply` to the watch event showing `Accepted=True` (includes kubectl's own
start-up, p50 {policies["sequential"]["kubectl_apply_seconds"]["p50"]} s for the whole `kubectl apply`).

{
        ob.md_table(
            ["mode", "policies", "p50 s", "p90 s", "p95 s", "max s"],
            [
                ["one at a time", seq["n"], seq["p50"], seq["p90"], seq["p95"], seq["max"]],
                [
                    f"all {args.policies} in one apply",
                    burst["n"],
                    burst["p50"],
                    burst["p90"],
                    burst["p95"],
                    burst["max"],
                ],
            ],
        )
    }

Operator RSS after the run: {rss:.0f} MiB (peak {hwm:.0f} MiB).
"""
    ob.write_results(
        "operator-admission",
        title="Operator: webhook admission latency and policy acceptance",
        machine=machine,
        body_md=body,
        data=data,
    )


if __name__ == "__main__":
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--pods", type=int, default=600, help="pods per namespace (3 namespaces)")
    parser.add_argument("--policies", type=int, default=30)
    parser.add_argument("--concurrency", type=int, default=16)
    parser.add_argument("--burst", type=int, default=500, help="replicas of the burst Deployment")
    asyncio.run(main(parser.parse_args()))
