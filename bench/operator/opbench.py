"""The shared parts of the operator benchmarks, one import away (`import opbench as ob`).

Each concern has its module: `measure` (numbers, the machine, result files, /proc, API-server
metrics), `cluster` (a control plane sized for thousands of kwok pods, and `Bench`: it plus the real
operator, `breakwater.testing.operator.OperatorProcess`), `apiclient` (an async API client with the
admin certificate), `manifests`, `simfleet` (simulated sidecars). Everything talks to 127.0.0.0/8 only;
every process is stopped by `Bench.close()`, which the scripts run in a `finally`, and dies with its
parent anyway.
"""

from __future__ import annotations

from apiclient import (
    GROUP_PATH,
    Api,
    create_policy,
    gather_limited,
    injected_metadata,
    wait_pods,
)
from manifests import (
    deployment_body,
    pod_template,
    policy_body,
)
from measure import (
    CpuWindow,
    cpu_seconds,
    histogram_delta,
    histogram_quantile,
    loadavg,
    log,
    machine_facts,
    md_table,
    memory_mib,
    parse_metrics,
    percentile,
    request_counts,
    summary,
    udp_drops,
    write_results,
)
from simfleet import (
    SimFleet,
    SimPod,
    sim_pods_for,
)

from cluster import (
    Bench,
    BenchControlPlane,
    start_control_plane,
)

__all__ = [
    "GROUP_PATH",
    "Api",
    "Bench",
    "BenchControlPlane",
    "CpuWindow",
    "SimFleet",
    "SimPod",
    "cpu_seconds",
    "create_policy",
    "deployment_body",
    "gather_limited",
    "histogram_delta",
    "histogram_quantile",
    "injected_metadata",
    "loadavg",
    "log",
    "machine_facts",
    "md_table",
    "memory_mib",
    "parse_metrics",
    "percentile",
    "pod_template",
    "policy_body",
    "request_counts",
    "sim_pods_for",
    "start_control_plane",
    "summary",
    "udp_drops",
    "wait_pods",
    "write_results",
]
