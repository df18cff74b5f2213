"""Issue 16 benchmark: leader failover with two operator replicas, and what a relayed report costs.

Two `breakwater operator` processes of one installation (one webhook configuration, one certificate,
one Lease; identities `replica-a`, `replica-b`) on the bench control plane. Simulated sidecars
(`opbench.SimFleet`: real pod-bound tokens, signed datagrams, 5 s summaries) report to the replica that
does **not** lead, so every report the leader uses was relayed to it.

A round: the fleet is Closed on the resource; the leader is stopped (SIGKILL: it vanishes, the Lease
must expire; or SIGTERM: it releases the Lease); at that moment every sidecar trips (a transition
report to the surviving replica). Measured from the stop: when the survivor holds the Lease, and when
the status shows every pod Open (the failover as a user sees it); then the count of `UpstreamOpen`
Events the round produced (exactly one per trip: nothing lost, nothing told twice). The stopped
replica is started again as the follower, the sidecars move to report to it, and the next round stops
the other one: rounds alternate kinds and replicas.

    .venv/bin/python bench/operator/failover.py --pods 100 --rounds 6 --lease-seconds 10
"""

from __future__ import annotations

import argparse
import asyncio
import os
import signal
import time
from typing import Any

import opbench as ob
from status_latency import StatusWatch

from breakwater.testing.operator import OPERATOR_NAMESPACE, OperatorProcess

NAMESPACE = "failover"


def replica(bench: ob.Bench, identity: str, args: tuple[str, ...]) -> OperatorProcess:
    first = bench.operator
    return OperatorProcess(
        first.kubeconfig,
        first.kubectl,
        bench.workdir / identity,
        extra_args=args,
        sidecar_image=first.sidecar_image,
        configuration=first.configuration,
        cert_dir=first.certs,
        identity=identity,
    )


async def holder(api: ob.Api, lease: str) -> str:
    body = await api.get(f"/apis/coordination.k8s.io/v1/namespaces/{OPERATOR_NAMESPACE}/leases/{lease}")
    identity = str((body.get("spec") or {}).get("holderIdentity") or "")
    return identity.rpartition("@")[2]  # breakwater@POD_NAME


async def open_events(api: ob.Api) -> int:
    events = await api.get(f"/api/v1/namespaces/{NAMESPACE}/events?fieldSelector=reason%3DUpstreamOpen")
    return sum(int(e.get("count") or 1) for e in events.get("items") or ())


async def wait_holder(api: ob.Api, lease: str, want: str, *, limit: float = 60) -> float:
    deadline = time.monotonic() + limit
    while time.monotonic() < deadline:
        if await holder(api, lease) == want:
            return time.monotonic()
        await asyncio.sleep(0.05)
    raise RuntimeError(f"{want} did not take the Lease within {limit} s")


async def run(args: argparse.Namespace) -> dict[str, Any]:
    flags = (f"--lease-seconds={args.lease_seconds}", "--shutdown-delay-seconds=0")
    bench = ob.Bench.start(big=True, operator_args=flags)
    replicas: dict[str, OperatorProcess] = {}
    api = ob.Api(bench.cp)
    fleet: ob.SimFleet | None = None
    try:
        # The bench's own operator becomes replica-a: restarted under that identity.
        bench.operator.stop()
        replicas = {name: replica(bench, name, flags) for name in ("replica-a", "replica-b")}
        replicas["replica-a"].start()
        replicas["replica-b"].start()
        lease = f"{bench.operator.configuration}-leader"
        leader = await holder(api, lease)
        await api.namespace(NAMESPACE)
        await api.wait_service_account(NAMESPACE)
        await ob.create_policy(api, NAMESPACE, ob.policy_body("payments", app="checkout", open_for="120s"))
        await api.post(
            f"/apis/apps/v1/namespaces/{NAMESPACE}/deployments",
            ob.deployment_body("checkout", app="checkout", node=bench.cp.node_name, replicas=args.pods),
        )
        await ob.wait_pods(api, NAMESPACE, args.pods, interval=0.3)
        sims = await ob.sim_pods_for(api, NAMESPACE, policy_of={"checkout": f"{NAMESPACE}/payments"})
        watch = StatusWatch(api, NAMESPACE, "payments")
        watch.start()
        rounds: list[dict[str, Any]] = []
        for number in range(args.rounds):
            kind = "SIGKILL" if number % 2 == 0 else "SIGTERM"
            follower = next(name for name in replicas if name != leader)
            if fleet is not None:
                await fleet.stop()
            for s in sims:
                s.transition("HalfOpen")
                s.transition("Closed")
            fleet = ob.SimFleet(
                replicas[follower].report_url, replicas[follower].ca_pem(), sims, interval=5.0
            )
            fleet.start()
            await watch.wait_for(
                lambda u: u.get("state") == "Closed" and u.get("closed") == args.pods, since=0, limit=90
            )
            await asyncio.sleep(6)  # a summary from every pod since the fleet moved
            events_before = await open_events(api)
            stopped = time.monotonic()
            os.kill(replicas[leader].pid, signal.SIGKILL if kind == "SIGKILL" else signal.SIGTERM)
            for s in sims:
                s.transition("Open")
                fleet.kick(s)
            took = await wait_holder(api, lease, follower)
            seen = await watch.wait_for(
                lambda u: u.get("state") == "Open" and u.get("open") == args.pods, since=stopped, limit=90
            )
            await asyncio.sleep(3)
            events = await open_events(api) - events_before
            row = {
                "round": number + 1,
                "kind": kind,
                "stopped": leader,
                "lease_seconds_after_stop": round(took - stopped, 2),
                "status_open_seconds_after_stop": round(seen - stopped, 2),
                "open_events": events,
            }
            ob.log(f"round {row}")
            rounds.append(row)
            replicas[leader].stop(signal.SIGKILL)
            replicas[leader].start()  # back as the follower
            leader = follower
        await watch.stop()
        return {"rounds": rounds, "pods": args.pods, "lease_seconds": args.lease_seconds}
    finally:
        if fleet is not None:
            await fleet.stop()
        await api.close()
        for process in replicas.values():
            process.stop()
        bench.close()


def main(args: argparse.Namespace) -> None:
    machine = ob.machine_facts()
    data = asyncio.run(run(args))
    rows = [
        [r["round"], r["kind"], r["stopped"], r["lease_seconds_after_stop"],
         r["status_open_seconds_after_stop"], r["open_events"]]
        for r in data["rounds"]
    ]  # fmt: skip
    summary = {}
    for kind in ("SIGKILL", "SIGTERM"):
        mine = [r["status_open_seconds_after_stop"] for r in data["rounds"] if r["kind"] == kind]
        summary[kind] = ob.summary(mine) if mine else {}
    data["summary"] = summary
    body = f"""
Two replicas, {data["pods"]} simulated sidecars reporting to the follower (every report the leader
uses is relayed), `--lease-seconds={data["lease_seconds"]}`. Each round stops the leader and trips every
sidecar at that moment; times are from the stop.

{ob.md_table(HEADERS, rows)}

Failover as a user sees it (stop → status Open on every pod), p50 / max over the rounds: SIGKILL
{spread(summary["SIGKILL"])}, SIGTERM {spread(summary["SIGTERM"])}. Target ≤ 15 s.
`UpstreamOpen` Events per round: exactly 1 means the trip was neither lost nor told twice.
"""
    ob.write_results(
        "operator-failover", title="Operator: leader failover", machine=machine, body_md=body, data=data
    )


def spread(summary: dict[str, Any]) -> str:
    return f"{summary['p50']} / {summary['max']} s (n {summary['n']})" if summary else "not measured"


HEADERS = ["round", "stop", "replica", "Lease taken s", "status Open s", "UpstreamOpen Events"]


if __name__ == "__main__":
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--pods", type=int, default=100)
    parser.add_argument("--rounds", type=int, default=6)
    parser.add_argument("--lease-seconds", type=int, default=10)
    main(parser.parse_args())
