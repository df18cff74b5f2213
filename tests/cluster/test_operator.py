"""The operator on the real control plane: reconcile, inject through the webhook, report, recover."""

from __future__ import annotations

import json
import signal
import textwrap
from typing import Any

import pytest

from breakwater.api.bundle import PolicyBundle
from breakwater.api.constants import ANNOTATION_CONFIG_HASH, CONFIGMAP_NAME, SIDECAR_NAME
from breakwater.injection.resolve import resolve
from breakwater.testing.operator import OperatorProcess
from tests.cluster.harness import (
    RESTRICTED_CONTAINER,
    condition,
    deployment_manifest,
    opt_in,
    pods,
    policy,
    policy_manifest,
    wait_accepted,
)
from tests.conftest import Cluster

pytestmark = pytest.mark.cluster


def sidecars(pod: dict[str, Any]) -> list[dict[str, Any]]:
    return [c for c in pod["spec"].get("initContainers", []) if c["name"] == SIDECAR_NAME]


def running(cluster: Cluster, namespace: str, selector: str, count: int) -> list[dict[str, Any]]:
    def check() -> list[dict[str, Any]]:
        found = [p for p in pods(cluster, namespace, selector) if p["status"].get("phase") == "Running"]
        return found if len(found) == count else []

    result: list[dict[str, Any]] = cluster.wait_for(f"{count} running pods ({selector})", check, timeout=60)
    return result


def test_pods_of_a_selected_deployment_get_the_sidecar_exactly_once(
    cluster: Cluster, namespace: str, running_operator: OperatorProcess
) -> None:
    opt_in(cluster, namespace, restricted=True)
    cluster.apply(policy_manifest("payments"), namespace=namespace)
    wait_accepted(cluster, namespace, "payments")
    cluster.apply(deployment_manifest("checkout", node=cluster.node_name, replicas=3), namespace=namespace)
    cluster.apply(
        deployment_manifest("other", node=cluster.node_name, app="cart", replicas=1), namespace=namespace
    )
    opted_out = deployment_manifest(
        "legacy", node=cluster.node_name, replicas=1, annotations={"breakwater.dev/inject": "false"}
    )
    cluster.apply(opted_out, namespace=namespace)

    for pod in running(cluster, namespace, "deployment=checkout", 3):
        (sidecar,) = sidecars(pod)  # exactly once
        assert sidecar["securityContext"]["readOnlyRootFilesystem"] is True
        assert sidecar["readinessProbe"]["httpGet"]["path"] == "/readyz"
        app = next(c for c in pod["spec"]["containers"] if c["name"] == "app")
        env = {e["name"]: e.get("value") for e in app.get("env", [])}
        assert env["BREAKWATER_PAYMENTS_URL"] == "http://127.0.0.1:15210"
        annotations = pod["metadata"]["annotations"]
        assert annotations["breakwater.dev/policies"] == f"{namespace}/payments"
        assert annotations[ANNOTATION_CONFIG_HASH]
    assert not sidecars(running(cluster, namespace, "deployment=other", 1)[0])
    assert not sidecars(running(cluster, namespace, "deployment=legacy", 1)[0])

    body = cluster.wait_for(
        "status counts the injected pods",
        lambda: (
            (b := policy(cluster, namespace, "payments"))["status"].get("pods", {}).get("injected") == 3 and b
        ),
    )
    assert body["status"]["pods"]["selected"] == 3
    ready = condition(body, "Ready")  # injected, but no sidecar process runs in this test
    assert (ready["status"], ready["reason"]) == ("False", "SidecarsNotReporting")


def test_pods_in_a_namespace_that_did_not_opt_in_are_untouched(
    cluster: Cluster, namespace: str, running_operator: OperatorProcess
) -> None:
    cluster.apply(policy_manifest("payments"), namespace=namespace)
    cluster.apply(deployment_manifest("checkout", node=cluster.node_name, replicas=1), namespace=namespace)
    assert not sidecars(running(cluster, namespace, "deployment=checkout", 1)[0])


def test_editing_a_policy_changes_its_config_and_deleting_it_removes_it_while_pods_run(
    cluster: Cluster, namespace: str, running_operator: OperatorProcess
) -> None:
    opt_in(cluster, namespace)
    cluster.apply(policy_manifest("payments"), namespace=namespace)

    def bundle() -> PolicyBundle | None:
        got = cluster.kubectl("get", "configmap", CONFIGMAP_NAME, "-n", namespace, "-o", "json", check=False)
        if got.returncode != 0:
            return None
        text = (json.loads(got.stdout).get("data") or {}).get("payments.json")
        return PolicyBundle.model_validate_json(text) if text else None

    first = cluster.wait_for("the policy's bundle", bundle)
    assert first.upstreams[0].timeout_seconds == 2.0
    cluster.apply(deployment_manifest("checkout", node=cluster.node_name, replicas=1), namespace=namespace)
    (pod,) = running(cluster, namespace, "deployment=checkout", 1)
    old_hash = pod["metadata"]["annotations"][ANNOTATION_CONFIG_HASH]
    assert old_hash == resolve(pod["metadata"]["labels"], [first]).config_hash

    cluster.kubectl(
        "patch", "cbp", "payments", "-n", namespace, "--type=merge", "-p", '{"spec":{"timeout":"750ms"}}'
    )
    second = cluster.wait_for(
        "the edited bundle", lambda: (b := bundle()) and b.upstreams[0].timeout_seconds == 0.75 and b
    )
    assert resolve(pod["metadata"]["labels"], [second]).config_hash != old_hash

    cluster.kubectl("delete", "cbp", "payments", "-n", namespace, "--timeout=30s")
    cluster.wait_for("the bundle removed", lambda: bundle() is None)
    (still,) = running(cluster, namespace, "deployment=checkout", 1)
    assert still["metadata"]["uid"] == pod["metadata"]["uid"]


def test_pods_created_while_the_operator_is_down_start_and_are_reported_later(
    cluster: Cluster, namespace: str, running_operator: OperatorProcess
) -> None:
    opt_in(cluster, namespace)
    cluster.apply(policy_manifest("payments"), namespace=namespace)
    cluster.apply(deployment_manifest("checkout", node=cluster.node_name, replicas=1), namespace=namespace)
    running(cluster, namespace, "deployment=checkout", 1)

    running_operator.stop()
    cluster.kubectl("scale", "deployment/checkout", "-n", namespace, "--replicas=3")
    current = running(cluster, namespace, "deployment=checkout", 3)
    assert sum(1 for p in current if not sidecars(p)) == 2  # created, not blocked

    running_operator.start()

    def reported() -> dict[str, Any] | None:
        body = policy(cluster, namespace, "payments")
        ready = condition(body, "Ready")
        return body if ready.get("reason") == "PodsNotInjected" else None

    body = cluster.wait_for("PodsNotInjected reported", reported, timeout=30)
    assert body["status"]["pods"] == {**body["status"]["pods"], "selected": 3, "injected": 1}
    assert "rollout restart" in condition(body, "Ready")["message"]


def test_two_policies_claiming_one_upstream_mark_the_newer_one_conflicting(
    cluster: Cluster, namespace: str, running_operator: OperatorProcess
) -> None:
    opt_in(cluster, namespace)
    cluster.apply(policy_manifest("first"), namespace=namespace)
    wait_accepted(cluster, namespace, "first")
    stock = textwrap.dedent(
        """
        - name: pay
          host: payments.shop.svc.cluster.local
          port: 8080
          listenPort: 15219
        - name: stock
          host: stock.shop.svc.cluster.local
          port: 8080
          listenPort: 15211
        """
    )
    cluster.apply(policy_manifest("second", upstreams=stock), namespace=namespace)
    cluster.apply(deployment_manifest("checkout", node=cluster.node_name, replicas=1), namespace=namespace)
    (pod,) = running(cluster, namespace, "deployment=checkout", 1)
    env = {e["name"]: e.get("value") for e in pod["spec"]["containers"][0].get("env", [])}
    assert env["BREAKWATER_PAYMENTS_URL"] == "http://127.0.0.1:15210"
    assert env["BREAKWATER_STOCK_URL"] == "http://127.0.0.1:15211"
    assert "BREAKWATER_PAY_URL" not in env

    conflict = cluster.wait_for(
        "Conflict on the newer policy",
        lambda: (
            (c := condition(policy(cluster, namespace, "second"), "Conflict")).get("status") == "True" and c
        ),
    )
    assert f"{namespace}/first" in conflict["message"]
    assert condition(policy(cluster, namespace, "first"), "Conflict").get("status") == "False"

    def warnings() -> list[dict[str, Any]]:
        out = cluster.kubectl(
            "get", "events", "-n", namespace, "--field-selector",
            "involvedObject.name=second,reason=Conflict", "-o", "json",
        ).stdout  # fmt: skip
        items: list[dict[str, Any]] = json.loads(out)["items"]
        return items

    (event,) = cluster.wait_for("a Conflict Event on the newer policy", warnings, timeout=30)
    assert (event["type"], event["message"]) == ("Warning", conflict["message"])


def test_a_sigkilled_operator_restarts_without_duplicate_sidecars_and_status_converges(
    cluster: Cluster, namespace: str, running_operator: OperatorProcess
) -> None:
    opt_in(cluster, namespace)
    cluster.apply(deployment_manifest("checkout", node=cluster.node_name, replicas=2), namespace=namespace)
    running(cluster, namespace, "deployment=checkout", 2)
    cluster.apply(policy_manifest("payments"), namespace=namespace)
    running_operator.stop(signal.SIGKILL)  # mid-reconcile: the policy was just applied
    running_operator.start()
    wait_accepted(cluster, namespace, "payments")
    cluster.kubectl("rollout", "restart", "deployment/checkout", "-n", namespace)

    def all_injected() -> list[dict[str, Any]]:
        found = [
            p
            for p in pods(cluster, namespace, "deployment=checkout")
            if p["status"].get("phase") == "Running"
        ]
        return found if len(found) == 2 and all(sidecars(p) for p in found) else []

    for pod in cluster.wait_for("restarted pods with the sidecar", all_injected, timeout=60):
        assert len(sidecars(pod)) == 1
    body = cluster.wait_for(
        "status converged: 2 selected, 2 injected",
        lambda: (
            (b := policy(cluster, namespace, "payments"))
            and (b.get("status") or {}).get("pods", {}).get("injected") == 2
            and (b.get("status") or {}).get("pods", {}).get("selected") == 2
            and b
        ),
    )
    finalizers = body["metadata"].get("finalizers", [])
    assert finalizers == ["breakwater.dev/finalizer"]
    assert not any(k.startswith("kopf.zalando.org") for k in body["metadata"].get("annotations", {}))


def test_restricted_pod_security_admits_the_injected_pod(
    cluster: Cluster, namespace: str, running_operator: OperatorProcess
) -> None:
    opt_in(cluster, namespace, restricted=True)
    cluster.apply(policy_manifest("payments"), namespace=namespace)
    wait_accepted(cluster, namespace, "payments")
    pod = {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": "client", "labels": {"app": "checkout"}},
        "spec": {
            "nodeName": cluster.node_name,
            "containers": [{"name": "app", "image": "app:1", **RESTRICTED_CONTAINER}],
        },
    }
    result = cluster.kubectl("apply", "-n", namespace, "-f", "-", input=json.dumps(pod), check=False)
    assert result.returncode == 0, result.stderr
    created = json.loads(cluster.kubectl("get", "pod", "client", "-n", namespace, "-o", "json").stdout)
    assert len(sidecars(created)) == 1


def test_a_time_boxed_override_ends_by_itself(
    cluster: Cluster, namespace: str, running_operator: OperatorProcess
) -> None:
    import datetime

    until = (datetime.datetime.now(datetime.UTC) + datetime.timedelta(seconds=5)).strftime(
        "%Y-%m-%dT%H:%M:%SZ"
    )
    manifest = policy_manifest(
        "payments", override={"mode": "ForceOpen", "until": until, "reason": "INC-42 drill"}
    )
    cluster.apply(manifest, namespace=namespace)

    def modes() -> list[str]:
        got = cluster.kubectl("get", "configmap", CONFIGMAP_NAME, "-n", namespace, "-o", "json", check=False)
        if got.returncode != 0:
            return []
        text = (json.loads(got.stdout).get("data") or {}).get("payments.json")
        return [u.mode for u in PolicyBundle.model_validate_json(text).upstreams] if text else []

    cluster.wait_for("ForceOpen while the override lasts", lambda: modes() == ["ForceOpen"])
    cluster.wait_for("Enforce once it has expired", lambda: modes() == ["Enforce"], timeout=15)


def test_a_removed_override_leaves_the_status(
    cluster: Cluster, namespace: str, running_operator: OperatorProcess
) -> None:
    """status.override named an override no longer in the spec: `kubectl describe` said Mode Disabled
    while the MODE column said Enforce."""
    override = {"mode": "Disabled", "until": "2031-01-01T00:00:00Z", "reason": "INC-7"}
    cluster.apply(policy_manifest("payments", override=override), namespace=namespace)

    def status() -> dict[str, Any]:
        got = cluster.kubectl("get", "cbp", "payments", "-n", namespace, "-o", "json", check=False)
        return dict(json.loads(got.stdout).get("status") or {}) if got.returncode == 0 else {}

    cluster.wait_for("the override in the status", lambda: (status().get("override") or {}).get("active"))
    cluster.kubectl(
        "patch", "cbp", "payments", "-n", namespace, "--type=merge", "-p", '{"spec":{"override":null}}'
    )
    cluster.wait_for("no override in the status", lambda: "override" not in status(), timeout=30)
    assert status()["summary"]["mode"] == "Enforce"
