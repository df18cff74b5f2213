"""`--log-format=json`: the operator logs one JSON object per line, with the policy, namespace and pod
of what it did as keys a log pipeline can filter on."""

from __future__ import annotations

import json
from typing import Any

import pytest

from breakwater.testing.operator import OperatorProcess
from tests.cluster.harness import deployment_manifest, opt_in, pods, policy_manifest, wait_accepted
from tests.conftest import Cluster

pytestmark = pytest.mark.cluster


@pytest.fixture(scope="module")
def operator_args() -> tuple[str, ...]:
    return ("--log-format=json",)


def records(operator: OperatorProcess) -> list[dict[str, Any]]:
    lines = operator.log_path.read_text(errors="replace").splitlines()
    bad = [line for line in lines if line.strip() and not line.startswith("{")]
    assert not bad, f"lines that are not JSON: {bad[:3]}"
    return [json.loads(line) for line in lines if line.strip()]


def test_json_logs_carry_the_policy_namespace_and_pod(
    cluster: Cluster, namespace: str, running_operator: OperatorProcess
) -> None:
    opt_in(cluster, namespace)
    cluster.apply(policy_manifest("payments"), namespace=namespace)
    wait_accepted(cluster, namespace, "payments")
    cluster.apply(deployment_manifest("checkout", node=cluster.node_name, replicas=1), namespace=namespace)
    cluster.wait_for("the pod", lambda: pods(cluster, namespace, "app=checkout"))

    def found() -> tuple[dict[str, Any], dict[str, Any]] | None:
        logged = records(running_operator)
        ours = [r for r in logged if r.get("policy") == "payments" and r.get("namespace") == namespace]
        rendered = [r for r in ours if "generation" in r]
        injected = [r for r in logged if r.get("namespace") == namespace and "pod" in r and "policies" in r]
        return (rendered[0], injected[0]) if rendered and injected else None

    rendered, injected = cluster.wait_for("the JSON records", found, timeout=30)
    assert {"ts", "level", "logger", "msg"} <= rendered.keys()
    assert rendered["generation"] == 1
    assert injected["policies"] == [f"{namespace}/payments"]
    assert injected["pod"].startswith("checkout-")
    # Named before the API server picks its name: its owner and the admission tell two such pods apart.
    assert injected["pod"].endswith("*")
    assert injected["owner"].startswith("ReplicaSet/checkout-")
    assert injected["admission"]
    # kopf's own lines about the policy say which policy too (they were the same for every policy).
    handled = [r for r in records(running_operator) if r["msg"] == "Handler 'reconcile_policy' succeeded."]
    assert any((r.get("policy"), r.get("namespace")) == ("payments", namespace) for r in handled), handled
