"""What the never-miss rule costs an admission: reads consistent with the API vs the cache alone.

Two operators run side by side on one control plane, each watching its own namespaces (so each
webhook configuration selects only its namespaces): `consistent` is this checkout (a GET from etcd of
every policy name of the namespace per admission, shared by concurrent admissions; see
controller/admission.py), `cache` is the operator of `--baseline` (default: the commit before the rule
landed), run from a git worktree.
Pods are created one at a time, then `--concurrency` at a time, the arms taken in turn so that both
operators see the same API server under the same load:

- `consistent-inject` / `cache-inject`: a policy selects the pod, the webhook injects;
- `consistent-nomatch` / `cache-nomatch`: opted in, no policy selects it: no patch;
- `plain`: not opted in, no webhook is called (the API server's own cost).

Added latency = arm - plain; the rule's cost = consistent - cache. The whole sequence runs `--rounds`
times; the table gives the median of the rounds and their spread (min-max). The API server's request
counts on policies (GET, LIST) say how many reads the rule sent.

    .venv/bin/python bench/operator/admission_consistency.py --pods 300 --rounds 3
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import statistics
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Any

import opbench as ob

from breakwater.injection.pod import sidecar_of
from breakwater.testing.operator import OperatorProcess

REPO = Path(__file__).resolve().parents[2]
ARMS = ("consistent-inject", "cache-inject", "plain", "consistent-nomatch", "cache-nomatch")
QUANTILES = ("p50", "p90", "p99")


@contextlib.contextmanager
def baseline_checkout(ref: str) -> Any:
    path = Path(tempfile.mkdtemp(prefix="breakwater-baseline-"))
    subprocess.run(["git", "-C", str(REPO), "worktree", "add", "--detach", str(path), ref], check=True)
    try:
        yield path
    finally:
        subprocess.run(["git", "-C", str(REPO), "worktree", "remove", "--force", str(path)], check=False)


async def create_pods(
    api: ob.Api, node: str, per_arm: int, prefix: str, concurrency: int
) -> dict[str, list[float]]:
    latencies: dict[str, list[float]] = {arm: [] for arm in ARMS}
    injected = dict.fromkeys(ARMS, 0)

    async def one(i: int) -> None:
        arm = ARMS[i % len(ARMS)]
        body = {
            "apiVersion": "v1",
            "kind": "Pod",
            **ob.pod_template("other" if "nomatch" in arm else "checkout", node),
        }
        body["metadata"]["name"] = f"{prefix}-{i:05d}"
        started = time.monotonic()
        got = await api.post(f"/api/v1/namespaces/{arm}/pods", body)
        latencies[arm].append(time.monotonic() - started)
        injected[arm] += sidecar_of(got) is not None

    await ob.gather_limited((one(i) for i in range(per_arm * len(ARMS))), concurrency)
    expected = {arm: per_arm if arm.endswith("-inject") else 0 for arm in ARMS}
    if injected != expected:
        raise RuntimeError(f"injection counts {injected}, expected {expected}")
    return latencies


def policy_reads(metrics: dict[str, list[tuple[dict[str, str], float]]]) -> dict[str, float]:
    """GETs and LISTs of policies the API server answered (every client: the watches' relists too)."""
    counts = {"GET": 0.0, "LIST": 0.0}
    for lab, v in metrics.get("apiserver_request_total", ()):
        if lab.get("resource") == "circuitbreakerpolicies" and lab.get("verb") in counts:
            counts[lab["verb"]] += v
    return counts


async def one_round(api: ob.Api, node: str, args: argparse.Namespace, n: int) -> dict[str, Any]:
    result: dict[str, Any] = {}
    for label, concurrency in (("sequential", 1), ("concurrent", args.concurrency)):
        before = policy_reads(ob.parse_metrics(await api.metrics_text()))
        lat = await create_pods(api, node, args.pods, f"r{n}-{label[:3]}", concurrency)
        after = policy_reads(ob.parse_metrics(await api.metrics_text()))
        reads = {verb: after[verb] - before[verb] for verb in after}
        client = {arm: ob.summary(lat[arm], scale=1000, digits=2) for arm in ARMS}
        result[label] = {"client_ms": client, "policy_reads": reads}
        ob.log(
            f"round {n} {label}: "
            + ", ".join(f"{a} p99 {client[a]['p99']}" for a in ARMS)
            + f"; reads {reads}"
        )
        for arm in ARMS:
            await api.request("DELETE", f"/api/v1/namespaces/{arm}/pods", ok=(404,))
        await asyncio.sleep(2)
    return result


def added(rounds: list[dict[str, Any]], label: str, arm: str, q: str, minus: str = "plain") -> list[float]:
    return [r[label]["client_ms"][arm][q] - r[label]["client_ms"][minus][q] for r in rounds]


def cell(values: list[float]) -> str:
    return f"{statistics.median(values):.1f} ({min(values):.1f}-{max(values):.1f})"


class BaselineOperator(OperatorProcess):
    """The operator of the baseline commit: one replica, kopf's own probe on `--liveness`."""

    READY_PATH = "/healthz"
    HEALTH_FLAG = "--liveness"


async def run(args: argparse.Namespace, machine: dict[str, Any], baseline: Path) -> None:
    cp = ob.start_control_plane()
    workdir = Path(tempfile.mkdtemp(prefix="breakwater-bench-"))
    watch = {
        "consistent": ("--namespace=consistent-inject", "--namespace=consistent-nomatch"),
        "cache": ("--namespace=cache-inject", "--namespace=cache-nomatch"),
    }
    operators = {
        "consistent": OperatorProcess(
            cp.kubeconfig, cp.binary("kubectl"), workdir / "consistent", extra_args=watch["consistent"]
        ),
        "cache": BaselineOperator(
            cp.kubeconfig,
            cp.binary("kubectl"),
            workdir / "cache",
            extra_args=watch["cache"],
            env={"PYTHONPATH": str(baseline / "operator")},
        ),
    }
    api = ob.Api(cp)
    try:
        for op in operators.values():
            op.start()
        for arm in ARMS:
            await api.namespace(arm, opted_in=arm != "plain")
            await api.wait_service_account(arm)
        for arm in ARMS:
            if arm != "plain":
                await ob.create_policy(api, arm, ob.policy_body("payments", app="checkout"))
        await create_pods(api, cp.node_name, 5, "warm", 1)  # connections, caches, webhook clients
        for arm in ARMS:
            await api.request("DELETE", f"/api/v1/namespaces/{arm}/pods", ok=(404,))
        await asyncio.sleep(2)
        rounds = [await one_round(api, cp.node_name, args, n) for n in range(args.rounds)]
        cpu = {name: ob.cpu_seconds(op.pid) for name, op in operators.items()}
    finally:
        await api.close()
        for op in operators.values():
            op.cleanup()
        cp.stop()

    rows = []
    for label in ("sequential", "concurrent"):
        for arm in ("consistent-inject", "cache-inject", "consistent-nomatch", "cache-nomatch"):
            rows.append([label, arm, *(cell(added(rounds, label, arm, q)) for q in QUANTILES)])
    cost_rows = []
    for label in ("sequential", "concurrent"):
        for kind in ("inject", "nomatch"):
            cost = [
                cell(added(rounds, label, f"consistent-{kind}", q, minus=f"cache-{kind}")) for q in QUANTILES
            ]
            cost_rows.append([label, kind, *cost])
    reads = {
        label: [int(sum(r[label]["policy_reads"].values())) for r in rounds]
        for label in ("sequential", "concurrent")
    }
    per_admission = {
        label: statistics.median(reads[label]) / (2 * args.pods) for label in reads
    }  # the consistent operator's admissions: its inject and nomatch arms
    body = f"""
Two operators side by side on one control plane, each watching its own two namespaces: `consistent`
(this commit: a GET from etcd of each policy of the namespace per admission, shared by concurrent
admissions) and `cache` (commit {args.baseline}, the bundle cache alone). {args.pods}
pods per arm and round, {args.rounds} rounds; one at a time, then {args.concurrency} in flight. Cells:
median of the rounds (min-max), client-side ms.

Added by the webhook (arm - plain):

{ob.md_table(["load", "arm", *QUANTILES], rows)}

What the never-miss rule costs (consistent - cache):

{ob.md_table(["load", "pods", *QUANTILES], cost_rows)}

Reads of policies the rule sent (GETs and LISTs, from the API server's request counts):
{reads["sequential"]} per round one at a time ({per_admission["sequential"]:.2f} per admission),
{reads["concurrent"]} at concurrency {args.concurrency}
({per_admission["concurrent"]:.2f} per admission: concurrent admissions of a namespace share reads).
Operator CPU over the whole run: consistent {cpu["consistent"]:.1f} s, cache {cpu["cache"]:.1f} s.
"""
    ob.write_results(
        "operator-admission-consistency",
        title="Operator: the cost of admissions consistent with the API",
        machine=machine,
        body_md=body,
        data={"args": vars(args), "rounds": rounds, "cpu_seconds": cpu},
    )


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--pods", type=int, default=300, help="pods per arm and round")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--concurrency", type=int, default=16)
    parser.add_argument(
        "--baseline", default="679e022", help="the commit whose operator answers from its cache"
    )
    args = parser.parse_args()
    machine = ob.machine_facts()
    with baseline_checkout(args.baseline) as baseline:
        asyncio.run(run(args, machine, baseline))


if __name__ == "__main__":
    main()
