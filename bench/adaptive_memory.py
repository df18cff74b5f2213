"""What the operator's adaptive state costs, measured with tracemalloc, no cluster needed.

The scale benchmark (bench/operator/scale.py --adaptive) measures the whole operator's RSS, which on
a shared 2-core machine also moves with backlogs (reports queued, sessions being opened). This one
measures only what adaptive tuning adds: `controller.adaptive.Adaptation` fed exactly as the operator
feeds it, for POLICIES policies of one upstream each and PODS reporting pods, every pod reporting every
5 s of simulated time for 70 minutes (more than the 1h window: every bucket filled), the tuner run
every 30 s. Run with tuning on and off (off still keeps the histories: it makes the suggestions).

    .venv/bin/python bench/adaptive_memory.py            # 1,000 policies, 10,000 pods
"""

from __future__ import annotations

import argparse
import gc
import random
import sys
import time
import tracemalloc
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent / "operator"))

from manifests import policy_body
from measure import machine_facts, md_table, write_results

from breakwater.adaptive.history import BYTES_PER_UPSTREAM
from breakwater.api.report import SidecarReport, UpstreamReport
from breakwater.controller.adaptive import Adaptation
from breakwater.controller.fleet import UpstreamFleet


def measure(policies: int, pods_per_policy: int, *, enabled: bool, minutes: int) -> dict[str, Any]:
    rng = random.Random(1)
    gc.collect()
    tracemalloc.start()
    before = tracemalloc.take_snapshot()
    adaptation = Adaptation(api=None)
    counters: dict[str, list[int]] = {}
    names = []
    for i in range(policies):
        namespace = f"scale-{i // 10:03d}"
        body = policy_body(f"policy-{i % 10}", app=f"app-{i % 10}", adaptive=enabled)
        body["metadata"] = {"name": f"policy-{i % 10}", "namespace": namespace, "generation": 1}
        policy = f"{namespace}/policy-{i % 10}"
        adaptation.configure(policy, body)
        names.append((namespace, policy))
    fleet = UpstreamFleet("payments", "Closed", 0, 0, pods_per_policy, 0, 0.05, 0, False)
    wall = 1_800_000_000.0
    for tick in range(minutes * 12):  # every 5 s
        wall += 5
        for namespace, policy in names:
            for p in range(pods_per_policy):
                pod = f"{policy}-{p}"
                c = counters.setdefault(pod, [0, 0] + [0] * 14)
                c[0] += 50
                c[1] += rng.randint(0, 5)
                for _ in range(5):
                    c[2 + rng.choice((3, 4, 4, 5, 5, 6))] += 10
                report = SidecarReport(
                    namespace=namespace,
                    pod=pod.rpartition("/")[2],
                    upstreams=[
                        UpstreamReport(
                            name="payments",
                            policy=policy,
                            state="Closed",
                            calls=c[0],
                            failures=c[1],
                            latency=c[2:],
                        )
                    ],
                )
                adaptation.ingest(report, now=wall)
        if tick % 6 == 0:  # the status loop: every 30 s
            for _, policy in names:
                adaptation.evaluate(policy, (fleet,), wall=wall, mono=wall)
    gc.collect()
    after = tracemalloc.take_snapshot()
    tracemalloc.stop()
    size = sum(s.size_diff for s in after.compare_to(before, "filename"))
    tuned = sum(1 for t in adaptation.tunings.values() for tr in t.state.tracks.values() if tr.tuned)
    return {
        "enabled": enabled,
        "policies": policies,
        "pods": policies * pods_per_policy,
        "traced_mib": round(size / 2**20, 2),
        "per_upstream_bytes": round(size / policies),
        "thresholds_tuned": tuned,
        "histories": len(adaptation.tunings),
        "pod_counters": sum(len(t.pods) for t in adaptation.tunings.values()),
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--policies", type=int, default=1000)
    parser.add_argument("--pods-per-policy", type=int, default=10)
    parser.add_argument("--minutes", type=int, default=70)
    args = parser.parse_args()
    machine = machine_facts()
    rows, data = [], []
    for enabled in (False, True):
        started = time.monotonic()
        got = measure(args.policies, args.pods_per_policy, enabled=enabled, minutes=args.minutes)
        got["seconds"] = round(time.monotonic() - started)
        data.append(got)
        rows.append(
            ["on" if enabled else "off (suggestions)", got["policies"], got["pods"], got["histories"],
             got["pod_counters"], got["thresholds_tuned"], got["traced_mib"], got["per_upstream_bytes"]]
        )  # fmt: skip
    body = (
        f"Counter bytes per history (fixed): {BYTES_PER_UPSTREAM}. Traced: every allocation the adaptive "
        f"state holds after {args.minutes} simulated minutes (histories, per-pod counters, tuner states, "
        "parsed parameters), reports themselves excluded.\n\n"
        + md_table(
            [
                "tuning",
                "policies",
                "pods",
                "histories",
                "pod counters",
                "thresholds tuned",
                "traced MiB",
                f"bytes per policy (1 upstream, {args.pods_per_policy} pods)",
            ],
            rows,
        )
    )
    write_results(
        "adaptive-memory", title="Adaptive state: memory per policy and pod (tracemalloc)", machine=machine,
        body_md=body, data={"runs": data},
    )  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(main())
