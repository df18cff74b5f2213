"""Issue 6 benchmark: operator CPU and RSS, status writes and API-server load as policies and reporting
pods grow, up to 1,000 policies and 10,000 pods.

Each step adds namespaces; a namespace holds `--policies-per-ns` policies, each selecting its own kwok
Deployment of `--pods-per-policy` replicas (created by kube-controller-manager, injected by the real
webhook, marked Running by kwok). Every running injected pod gets a pod-bound token and a simulated
sidecar (`opbench.SimFleet`: a session per pod over HTTPS, then real-shaped signed report datagrams
every 5 s from one UDP socket per pod, failure rates that vary so the status figures change).
After `--settle` seconds the step is measured for `--window`
seconds: operator CPU (user+sys from /proc), RSS, reports accepted per second against the offered
rate, report round-trip, and from the API server's metrics the status PATCHes and TokenReviews.
The operator runs with the image's packages (`image_packages.py`: the dev venv's test-only
`kubernetes` client, which kopf imports whenever it can, is not found).

At the last step, a storm: every pod's breaker opens at once, then closes; measured is how long until
every policy's status shows it, and the status write rate meanwhile. Then a pause: reporters stop
for `--window`/2 s to show what the status loop costs on its own.

Growth stops early when the operator falls behind (accepts < 90 % of the offered reports, or the
report round-trip p99 exceeds 5 s); the table says so.

    .venv/bin/python bench/operator/scale.py --steps 1,10,30,60,100 --policies-per-ns 10 --pods-per-policy 10
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import time
from pathlib import Path
from typing import Any

import opbench as ob

from breakwater.testing.operator import OperatorProcess

HERE = Path(__file__).resolve().parent
IMAGE_CLI = str(HERE / "image_packages.py")  # the operator with the image's packages, not the dev venv's
SAMPLED_CLI = str(HERE / "sampled_cli.py")  # the same, sampling its memory


async def add_namespace(
    api: ob.Api, node: str, index: int, policies: int, pods: int, accept: float = 120, adaptive: bool = False
) -> None:
    namespace = f"scale-{index:03d}"
    await api.namespace(namespace)
    await api.wait_service_account(namespace)
    await asyncio.gather(
        *(
            ob.create_policy(
                api, namespace, ob.policy_body(f"policy-{i}", app=f"app-{i}", adaptive=adaptive), limit=accept
            )
            for i in range(policies)
        )
    )
    for i in range(policies):
        await api.post(
            f"/apis/apps/v1/namespaces/{namespace}/deployments",
            ob.deployment_body(f"app-{i}", app=f"app-{i}", node=node, replicas=pods),
        )


async def wait_all_pods(api: ob.Api, target: int, limit: float) -> tuple[float, int]:
    """Wait until `target` pods run; returns (seconds, how many run WITHOUT the sidecar).

    A pod whose admission outlasted the webhook's 5 s timeout is created without the sidecar
    (failurePolicy Ignore): it is counted, never waited for."""
    started = time.monotonic()
    last = (-1, -1)
    while time.monotonic() - started < limit:
        running = await api.running_pod_metadata()
        injected = len(ob.injected_metadata(running))
        if (len(running), injected) != last:
            ob.log(f"{len(running)}/{target} pods running, {injected} with the sidecar")
            last = (len(running), injected)
        if len(running) >= target:
            return time.monotonic() - started, len(running) - injected
        await asyncio.sleep(3)
    raise RuntimeError(f"only {last[0]}/{target} pods running after {limit} s")


async def new_sims(api: ob.Api, known: set[str]) -> list[ob.SimPod]:
    sims = []
    for meta in ob.injected_metadata(await api.running_pod_metadata()):
        key = f"{meta['namespace']}/{meta['name']}"
        if key in known:
            continue
        known.add(key)
        app = meta["labels"]["app"]
        sims.append(
            ob.SimPod(
                namespace=meta["namespace"],
                name=meta["name"],
                uid=meta["uid"],
                ip="",  # reports go over UDP to the operator; nothing calls the pod
                policy=f"{meta['namespace']}/policy-{app.removeprefix('app-')}",
            )
        )
    tokens = await ob.gather_limited((api.token(s.namespace, s.name, s.uid, seconds=7200) for s in sims), 48)
    for s, t in zip(sims, tokens, strict=True):
        s.token = t
    return sims


async def settle(fleet: ob.SimFleet, least: float, most: float) -> tuple[bool, float]:
    """Wait until the new pods' first reports (a TokenReview each) are through: the report round-trip
    p99 over the last 5 s under 1 s. Returns (settled, seconds waited)."""
    started = time.monotonic()
    await asyncio.sleep(least)
    while time.monotonic() - started < most:
        mark = len(fleet.post_latencies)
        await asyncio.sleep(5)
        recent = fleet.post_latencies[mark:]
        if recent and ob.percentile(recent, 99) < 1.0:
            return True, time.monotonic() - started
    return False, time.monotonic() - started


async def measure(
    bench: ob.Bench, api: ob.Api, fleet: ob.SimFleet, window: float, follower: OperatorProcess | None = None
) -> dict[str, Any]:
    m0 = ob.request_counts(ob.parse_metrics(await api.metrics_text()))
    fleet.post_latencies.clear()
    sent0, errors0 = fleet.sent, sum(fleet.errors.values())
    drops0 = ob.udp_drops(bench.operator.report_port)
    pids = bench.cp.pids
    windows = {"operator": ob.CpuWindow(bench.operator.pid).start()}
    if follower is not None:  # --relay: the replica the sidecars report to, relaying to the leader
        windows["follower"] = ob.CpuWindow(follower.pid).start()
    for name in ("kube-apiserver", "etcd"):
        windows[name] = ob.CpuWindow(pids[name]).start()
    import os

    windows["simulator"] = ob.CpuWindow(os.getpid()).start()
    peak_rss = 0.0
    started = time.monotonic()
    while time.monotonic() - started < window:
        await asyncio.sleep(1)
        peak_rss = max(peak_rss, ob.memory_mib(bench.operator.pid)[0])
    for w in windows.values():
        w.stop()
    m1 = ob.request_counts(ob.parse_metrics(await api.metrics_text()))
    wall = windows["operator"].wall
    rss, hwm = ob.memory_mib(bench.operator.pid)
    relay = {}
    if follower is not None:
        relay = {"follower_rss_mib": round(ob.memory_mib(follower.pid)[0], 1)}
    return {
        **relay,
        "window_seconds": round(wall, 1),
        "cpu_percent": {k: w.percent for k, w in windows.items()},
        "operator_rss_mib": round(rss, 1),
        "operator_rss_peak_in_window_mib": round(peak_rss, 1),
        "operator_hwm_mib": round(hwm, 1),
        "reports_per_second": round(len(fleet.post_latencies) / wall, 1),  # answered by the operator
        "reports_sent_per_second": round((fleet.sent - sent0) / wall, 1),
        "report_errors": sum(fleet.errors.values()) - errors0,
        "datagrams_dropped": ob.udp_drops(bench.operator.report_port) - drops0,
        "report_rtt_ms": ob.summary(fleet.post_latencies, scale=1000, digits=1),
        "status_patches_per_second": round((m1["status_patches"] - m0["status_patches"]) / wall, 2),
        "tokenreviews_per_second": round((m1["tokenreviews"] - m0["tokenreviews"]) / wall, 2),
        "events_per_second": round((m1["events"] - m0["events"]) / wall, 2),
        "apiserver_requests_per_second": round((m1["all"] - m0["all"]) / wall, 1),
        "loadavg": ob.loadavg(),
    }


async def watch_states(
    api: ob.Api, path: str, version: str, want: str, pending: set[tuple[str, str]], arrivals: list[float]
) -> None:
    """Record when each pending policy's status first shows `want`. One watch, not repeated lists:
    1,000 policies listed every 0.2 s would load the API server more than the storm does."""
    async for now, event in api.watch(path, resource_version=version):
        item = event.get("object") or {}
        meta = item.get("metadata") or {}
        key = (meta.get("namespace"), meta.get("name"))
        ups = (item.get("status") or {}).get("upstreams") or [{}]
        if key in pending and ups[0].get("state") == want:
            pending.discard(key)
            arrivals.append(now)
            if not pending:
                return


async def storm(
    api: ob.Api, fleet: ob.SimFleet, namespaces: list[str], policies: int, limit: float, port: int
) -> dict[str, Any]:
    """Every breaker opens at once; how long until every policy shows Open on all its pods, then Closed."""
    out: dict[str, Any] = {}
    for to_states, want in ((("Open",), "Open"), (("HalfOpen", "Closed"), "Closed")):
        m0 = ob.request_counts(ob.parse_metrics(await api.metrics_text()))
        drops0 = ob.udp_drops(port)
        pending = {(ns, f"policy-{i}") for ns in namespaces for i in range(policies)}
        path = f"{ob.GROUP_PATH}/circuitbreakerpolicies"
        version = (await api.get(path + "?limit=1"))["metadata"]["resourceVersion"]
        arrivals: list[float] = []
        watcher = asyncio.create_task(watch_states(api, path, version, want, pending, arrivals))
        await asyncio.sleep(0.5)  # the watch is established
        started = time.monotonic()
        for s in fleet.pods:
            for state in to_states:
                s.transition(state)
            fleet.kick(s)
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(asyncio.shield(watcher), limit)
        watcher.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await watcher
        wall = time.monotonic() - started
        seen = [at - started for at in arrivals]
        for ns, name in sorted(pending)[:3]:
            got = await api.policy(ns, name)
            ob.log(f"still not {want}: {ns}/{name} status {json.dumps(got.get('status'))[:1500]}")
        m1 = ob.request_counts(ob.parse_metrics(await api.metrics_text()))
        out[want] = {
            "policies_seen": len(seen),
            "policies_missing": len(pending),
            "seconds": ob.summary(seen),
            "status_patches_per_second": round((m1["status_patches"] - m0["status_patches"]) / wall, 1),
            "window_seconds": round(wall, 1),
            "datagrams_dropped": ob.udp_drops(port) - drops0,  # resent by the sidecars after ~1 s
        }
        ob.log(f"storm {want}: {out[want]}")
        await asyncio.sleep(5)
    return out


async def main(args: argparse.Namespace) -> None:
    machine = ob.machine_facts()
    launcher = (IMAGE_CLI,)
    if args.memory_samples:  # the operator under bench/operator/sampled_cli.py
        os.environ["BREAKWATER_MEMORY_SAMPLES"] = str(args.memory_samples)
        launcher = (SAMPLED_CLI,)
    bench = ob.Bench.start(big=True, launcher=launcher)
    steps: list[dict[str, Any]] = []
    extra: dict[str, Any] = {}
    stopped = ""
    follower = None
    try:
        api = ob.Api(bench.cp, limit=96)
        reports_to = bench.operator
        if args.relay:  # a second replica of the same installation; the sidecars report to it
            first = bench.operator
            follower = OperatorProcess(
                first.kubeconfig, first.kubectl, bench.workdir / "follower",
                sidecar_image=first.sidecar_image, configuration=first.configuration, cert_dir=first.certs,
                identity="follower",
            )  # fmt: skip
            follower.start()
            reports_to = follower
        fleet = ob.SimFleet(reports_to.report_url, reports_to.ca_pem(), [], interval=args.interval)
        try:
            known: set[str] = set()
            made = 0
            for target_ns in args.steps:
                step_started = time.monotonic()
                pods_target = target_ns * args.policies_per_ns * args.pods_per_policy
                try:
                    await ob.gather_limited(
                        (add_namespace(api, bench.cp.node_name, i, args.policies_per_ns, args.pods_per_policy,
                                       adaptive=args.adaptive)
                         for i in range(made, target_ns)), 8,
                    )  # fmt: skip
                    pods_seconds, uninjected = await wait_all_pods(api, pods_target, limit=args.pod_limit)
                except RuntimeError as exc:
                    stopped = f"the step to {pods_target} pods failed: {exc}"
                    ob.log(stopped)
                    break
                made = target_ns
                sims = await new_sims(api, known)
                await asyncio.sleep(3)
                rss_before_reports = ob.memory_mib(bench.operator.pid)[0]
                fleet.pods.extend(sims)
                fleet.start(sims)
                setup = time.monotonic() - step_started
                ob.log(
                    f"step {made} namespaces: {pods_target} pods in {pods_seconds:.0f} s, setup {setup:.0f} s"
                )
                settled, settle_seconds = await settle(fleet, args.settle, args.settle_max)
                got = await measure(bench, api, fleet, args.window, follower)
                got.update(
                    namespaces=made, policies=made * args.policies_per_ns, pods=len(fleet.pods),
                    offered_reports_per_second=round(len(fleet.pods) / args.interval, 1),
                    pods_ready_seconds=round(pods_seconds, 1), setup_seconds=round(setup, 1),
                    operator_rss_before_new_reporters_mib=round(rss_before_reports, 1),
                    pods_created=pods_target, pods_without_sidecar=uninjected,
                    settled=settled, settle_seconds=round(settle_seconds, 1),
                )  # fmt: skip
                steps.append(got)
                ob.log(f"step: {got}")
                behind = got["reports_per_second"] < 0.9 * got["offered_reports_per_second"]
                slow = (got["report_rtt_ms"]["p99"] or 0) > 5000
                if (behind or slow) and not args.force:
                    stopped = (
                        f"stopped growing after {made} namespaces: the operator accepted "
                        f"{got['reports_per_second']}/s of {got['offered_reports_per_second']}/s offered, "
                        f"report round-trip p99 {got['report_rtt_ms']['p99']} ms"
                    )
                    ob.log(stopped)
                    break
            namespaces = [f"scale-{i:03d}" for i in range(made)]
            if args.storm:
                extra["storm"] = await storm(
                    api, fleet, namespaces, args.policies_per_ns, limit=90, port=bench.operator.report_port
                )
            await fleet.stop()
            await asyncio.sleep(2)
            pause = await measure(bench, api, fleet, args.window / 2)
            extra["reporters_paused"] = pause
            ob.log(f"paused: {pause}")
        finally:
            await fleet.stop()
            await api.close()
    finally:
        if follower is not None:
            follower.stop()
        bench.close()
    render(args, machine, steps, extra, stopped)


HEADERS = [
    "policies", "reporting pods", "pods created without sidecar", "settle s", "reports/s answered / offered",
    "report RTT p50 ms", "p99 ms", "errors", "operator CPU", "operator RSS MiB",
    "RSS before the step's pods reported", "status PATCH/s", "per policy", "TokenReviews/s", "apiserver CPU",
    "simulator CPU", "load avg",
]  # fmt: skip


def _plain(value: Any) -> Any:
    return str(value) if isinstance(value, Path) else value


def render(
    args: argparse.Namespace,
    machine: dict[str, Any],
    steps: list[dict[str, Any]],
    extra: dict[str, Any],
    stopped: str,
) -> None:
    rows = []
    for s in steps:
        cpu = s["cpu_percent"]
        rows.append([
            s["policies"], s["pods"], s.get("pods_without_sidecar", 0),
            f"{s['settle_seconds']}" + ("" if s["settled"] else " (not calm)"),
            f"{s['reports_per_second']} / {s['offered_reports_per_second']}",
            s["report_rtt_ms"]["p50"], s["report_rtt_ms"]["p99"], s["report_errors"], f"{cpu['operator']}%",
            s["operator_rss_mib"], s["operator_rss_before_new_reporters_mib"], s["status_patches_per_second"],
            round(s["status_patches_per_second"] / s["policies"], 3), s["tokenreviews_per_second"],
            f"{cpu['kube-apiserver']}%", f"{cpu['simulator']}%", " ".join(s["loadavg"]),
        ])  # fmt: skip
    last = steps[-1] if steps else {}
    st = extra.get("storm", {})
    storm_rows = [
        [
            k,
            v["policies_seen"],
            v["policies_missing"],
            v["seconds"]["p50"],
            v["seconds"]["p95"],
            v["seconds"]["max"],
            v["status_patches_per_second"],
        ]
        for k, v in st.items()
    ]
    pause = extra.get("reporters_paused", {})
    body = f"""
Per step: namespaces x {args.policies_per_ns} policies x {args.pods_per_policy} pods per policy; every pod
reports every {args.interval:g} s (a signed datagram from its own UDP socket, after one HTTPS session
request with its pod-bound token), measured over {args.window:g} s once the new
pods' first reports are through (report round-trip p99 < 1 s over 5 s; at least {args.settle:g} s, at
most {args.settle_max:g} s: "settle" column). CPU is user+sys over the window (100 % = one core of the 2).

{ob.md_table(HEADERS, rows)}

{stopped or "Every step kept up with the offered reports."}

Storm at {last.get("policies", 0)} policies / {last.get("pods", 0)} pods: every breaker opens at once (one
transition report per pod, sent at once), later every one closes. Seconds until each policy's status
shows it (one cluster-wide watch on the policies):

{ob.md_table(["to", "policies seen", "missing after 90 s", "p50 s", "p95 s", "max s", "PATCH/s"], storm_rows)}

Reporters paused ({pause.get("window_seconds", 0)} s, nothing reports; the status loop's 5 s sweep
over {last.get("policies", 0)} policies still runs):
operator CPU {pause.get("cpu_percent", {}).get("operator")}%,
status PATCH/s {pause.get("status_patches_per_second")}.
"""
    ob.write_results(
        args.results, title="Operator: CPU, memory and API-server load with policies and reporting pods",
        machine=machine, body_md=body,
        data={"steps": steps, **extra, "stopped": stopped,
              "args": {k: _plain(v) for k, v in vars(args).items()}},
    )  # fmt: skip


def ints(text: str) -> list[int]:
    return [int(x) for x in text.split(",") if x]


if __name__ == "__main__":
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--steps", type=ints, default=[1, 10, 30, 60, 100], help="namespaces after each step")
    parser.add_argument("--policies-per-ns", type=int, default=10)
    parser.add_argument("--pods-per-policy", type=int, default=10)
    parser.add_argument(
        "--interval", type=float, default=5.0, help="report interval of the simulated sidecars"
    )
    parser.add_argument(
        "--settle", type=float, default=20.0, help="least seconds between a step and its window"
    )
    parser.add_argument("--settle-max", type=float, default=150.0, help="most seconds to wait for a calm")
    parser.add_argument("--window", type=float, default=60.0)
    parser.add_argument(
        "--results", default="operator-scale", help="name of the result files in bench/results/"
    )
    parser.add_argument("--pod-limit", type=float, default=900.0, help="seconds to wait for a step's pods")
    parser.add_argument(
        "--force", action="store_true", help="keep growing even when the operator falls behind"
    )
    parser.add_argument(
        "--relay",
        action="store_true",
        help="two replicas: the sidecars report to the follower, which relays every report to the leader "
        "(the operator CPU column is the leader's; the follower's is in the JSON)",
    )
    parser.add_argument(
        "--memory-samples",
        type=lambda p: Path(p).resolve(),
        help="append the operator's memory breakdown every 10 s to this file",
    )
    parser.add_argument("--adaptive", action="store_true", help="every policy with spec.adaptive.enabled")
    parser.add_argument("--no-storm", dest="storm", action="store_false", help="skip the storm at the end")
    args = parser.parse_args()
    try:
        import uvloop

        uvloop.install()  # the simulator needs every cycle it can get on 2 cores
    except ImportError:
        pass
    asyncio.run(main(args))
