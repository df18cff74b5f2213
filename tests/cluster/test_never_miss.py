"""A pod admitted after a policy was persisted carries that policy, whatever the operator's caches hold.

As a GitOps tool applies a directory: the policy and the Deployment in one `kubectl apply`, into a fresh
namespace, some of them right after the operator (re)started; a policy edit followed at once by a
rollout; a deletion followed at once by a pod. The rounds are few in CI; the loop recorded in
docs/design.md ran them with BREAKWATER_NEVER_MISS_APPLIES=50 and BREAKWATER_NEVER_MISS_EDITS=20.
"""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import time
import uuid
from collections.abc import Iterator
from typing import Any

import pytest

from breakwater.api.constants import ANNOTATION_CONFIG_HASH
from breakwater.controller.admission import PolicyView, read_policies
from breakwater.injection.pod import sidecar_of
from breakwater.injection.render import render_bundle
from breakwater.injection.resolve import resolve
from breakwater.k8s.aio import AsyncApi
from breakwater.testing.operator import OperatorProcess
from tests.cluster.harness import (
    RESTRICTED_CONTAINER,
    deployment_manifest,
    install_crd,
    opt_in,
    pods,
    policy,
    policy_manifest,
)
from tests.conftest import Cluster

pytestmark = pytest.mark.cluster

APPLIES = int(os.environ.get("BREAKWATER_NEVER_MISS_APPLIES", "6"))
EDITS = int(os.environ.get("BREAKWATER_NEVER_MISS_EDITS", "4"))


def has_sidecar(pod: dict[str, Any]) -> bool:
    return sidecar_of(pod) is not None


def expected_hash(cluster: Cluster, namespace: str, labels: dict[str, str]) -> str:
    return resolve(labels, [render_bundle(policy(cluster, namespace, "payments"))]).config_hash


def current_pods(cluster: Cluster, namespace: str, count: int) -> list[dict[str, Any]]:
    """The `count` pods of the checkout Deployment once exactly that many exist and none is leaving."""

    def check() -> list[dict[str, Any]]:
        found = [
            p for p in pods(cluster, namespace, "app=checkout") if not p["metadata"].get("deletionTimestamp")
        ]
        return found if len(found) == count else []

    result: list[dict[str, Any]] = cluster.wait_for(f"{count} checkout pods", check, timeout=90)
    return result


@pytest.fixture
def fresh_namespaces(cluster: Cluster) -> Iterator[list[str]]:
    created: list[str] = []
    yield created
    for name in created:
        cluster.kubectl("delete", "namespace", name, "--wait=false", check=False)


def new_namespace(cluster: Cluster, created: list[str]) -> str:
    name = f"t-never-miss-{uuid.uuid4().hex[:8]}"
    cluster.kubectl("create", "namespace", name)
    created.append(name)
    opt_in(cluster, name)
    cluster.wait_for(
        f"default ServiceAccount in {name}",
        lambda: cluster.kubectl("get", "serviceaccount", "default", "-n", name, check=False).returncode == 0,
    )
    return name


def restart_and_wait_for_the_webhook_port(operator: OperatorProcess) -> None:
    operator.stop()
    operator.start(wait=False)
    operator.wait_webhook_listening()


def test_a_policy_and_its_deployment_applied_in_one_go_inject_every_pod(
    cluster: Cluster, running_operator: OperatorProcess, fresh_namespaces: list[str]
) -> None:
    missed: list[str] = []
    for round_ in range(APPLIES):
        namespace = new_namespace(cluster, fresh_namespaces)
        manifest = (
            policy_manifest("payments")
            + "---\n"
            + deployment_manifest("checkout", node=cluster.node_name, replicas=3)
        )
        if round_ % 3 == 0:  # a third of them with the operator just started: its caches are empty
            restart_and_wait_for_the_webhook_port(running_operator)
        cluster.apply(manifest, namespace=namespace)
        for pod in current_pods(cluster, namespace, 3):
            if not has_sidecar(pod):
                missed.append(f"{namespace}/{pod['metadata']['name']}")
    running_operator.wait_ready()
    assert missed == [], f"{len(missed)} of {3 * APPLIES} pods started without the sidecar"


def test_a_policy_and_a_bare_pod_applied_in_one_go_inject_the_pod(
    cluster: Cluster, running_operator: OperatorProcess, fresh_namespaces: list[str]
) -> None:
    """No controller between the two: the pod's admission follows the policy's persistence by the
    time kubectl takes to send the next document."""
    missed: list[str] = []
    for _ in range(APPLIES):
        namespace = new_namespace(cluster, fresh_namespaces)
        cluster.apply(policy_manifest("payments") + "---\n" + bare_pod(cluster, "first"), namespace=namespace)
        if not has_sidecar(created_pod(cluster, namespace, "first")):
            missed.append(namespace)
    assert missed == []


def test_a_rollout_right_after_an_edit_runs_the_edited_config(
    cluster: Cluster, running_operator: OperatorProcess, namespace: str
) -> None:
    opt_in(cluster, namespace)
    cluster.apply(policy_manifest("payments", timeout="2s"), namespace=namespace)
    cluster.apply(deployment_manifest("checkout", node=cluster.node_name, replicas=3), namespace=namespace)
    current_pods(cluster, namespace, 3)
    stale: list[str] = []
    for edit in range(EDITS):
        timeout = f"{500 + 100 * edit}ms"
        cluster.kubectl(
            "patch",
            "cbp",
            "payments",
            "-n",
            namespace,
            "--type=merge",
            "-p",
            json.dumps({"spec": {"timeout": timeout}}),
        )
        # What `kubectl rollout restart` does, without its one-restart-per-second limit.
        restart = {"spec": {"template": {"metadata": {"annotations": {"breakwater.test/edit": str(edit)}}}}}
        cluster.kubectl("patch", "deployment/checkout", "-n", namespace, "-p", json.dumps(restart))
        cluster.kubectl(
            "rollout", "status", "deployment/checkout", "-n", namespace, "--timeout=90s", timeout=100
        )
        for pod in current_pods(cluster, namespace, 3):
            labels = pod["metadata"]["labels"]
            got = pod["metadata"].get("annotations", {}).get(ANNOTATION_CONFIG_HASH)
            if not has_sidecar(pod) or got != expected_hash(cluster, namespace, labels):
                stale.append(f"edit {edit} ({timeout}): {pod['metadata']['name']} runs {got}")
    assert stale == []


def bare_pod(cluster: Cluster, name: str) -> str:
    return json.dumps(
        {
            "apiVersion": "v1",
            "kind": "Pod",
            "metadata": {"name": name, "labels": {"app": "checkout"}},
            "spec": {
                "nodeName": cluster.node_name,
                "containers": [{"name": "app", "image": "registry.example/app:1", **RESTRICTED_CONTAINER}],
            },
        }
    )


def created_pod(cluster: Cluster, namespace: str, name: str) -> dict[str, Any]:
    body: dict[str, Any] = json.loads(
        cluster.kubectl("get", "pod", name, "-n", namespace, "-o", "json").stdout
    )
    return body


def create_while_frozen(
    cluster: Cluster, operator: OperatorProcess, namespace: str, change: list[str], pod: str
) -> None:
    """Change the policy and create a pod while the operator is frozen, then let it go: the webhook
    call waits in the operator's socket backlog and is answered next to the policy's watch event,
    with the bundle cache still holding the policy as it was."""
    with operator.frozen():
        cluster.kubectl(*change)
        creating = subprocess.Popen(
            [
                cluster.tool("kubectl"),
                f"--kubeconfig={cluster.kubeconfig}",
                "apply",
                "-n",
                namespace,
                "-f",
                "-",
            ],
            stdin=subprocess.PIPE,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
        )
        assert creating.stdin is not None
        creating.stdin.write(bare_pod(cluster, pod))
        creating.stdin.close()
        time.sleep(0.5)  # the API server has called the (frozen) webhook by now
    assert creating.wait(timeout=30) == 0, creating.stderr.read() if creating.stderr else ""


def test_a_pod_created_right_after_its_policy_was_deleted_is_not_injected(
    cluster: Cluster, running_operator: OperatorProcess, namespace: str
) -> None:
    opt_in(cluster, namespace)
    cluster.apply(policy_manifest("payments"), namespace=namespace)
    cluster.apply(bare_pod(cluster, "before"), namespace=namespace)
    assert has_sidecar(created_pod(cluster, namespace, "before"))
    delete = ["delete", "cbp", "payments", "-n", namespace, "--wait=false"]
    create_while_frozen(cluster, running_operator, namespace, delete, "after")
    assert not has_sidecar(created_pod(cluster, namespace, "after"))


def test_a_pod_created_right_after_an_edit_runs_the_edited_config(
    cluster: Cluster, running_operator: OperatorProcess, namespace: str
) -> None:
    opt_in(cluster, namespace)
    cluster.apply(policy_manifest("payments", timeout="2s"), namespace=namespace)
    cluster.apply(bare_pod(cluster, "before"), namespace=namespace)
    edit = ["patch", "cbp", "payments", "-n", namespace, "--type=merge", "-p", '{"spec":{"timeout":"600ms"}}']
    create_while_frozen(cluster, running_operator, namespace, edit, "after")
    before, after = created_pod(cluster, namespace, "before"), created_pod(cluster, namespace, "after")
    assert has_sidecar(after)
    hashes = [p["metadata"]["annotations"][ANNOTATION_CONFIG_HASH] for p in (before, after)]
    assert hashes[1] != hashes[0]
    assert hashes[1] == expected_hash(cluster, namespace, after["metadata"]["labels"])


def test_a_pod_created_as_soon_as_a_restarted_webhook_listens_gets_a_policy_applied_while_it_was_down(
    cluster: Cluster, running_operator: OperatorProcess, namespace: str
) -> None:
    opt_in(cluster, namespace)
    running_operator.stop()
    cluster.apply(policy_manifest("payments"), namespace=namespace)  # persisted, never reconciled yet
    running_operator.start(wait=False)
    running_operator.wait_webhook_listening()
    cluster.apply(bare_pod(cluster, "first"), namespace=namespace)
    pod = created_pod(cluster, namespace, "first")
    assert has_sidecar(pod), running_operator.tail()
    assert pod["metadata"]["annotations"][ANNOTATION_CONFIG_HASH] == expected_hash(
        cluster, namespace, pod["metadata"]["labels"]
    )
    running_operator.wait_ready()


def test_a_name_noted_from_a_create_is_read_from_the_api_before_the_watch_delivers_it(
    cluster: Cluster, namespace: str
) -> None:
    """The residual race the policy webhook closes, made deterministic: a view whose watch never
    delivers anything (as if late), told only what the webhook tells it."""
    install_crd(cluster)

    async def scenario() -> list[list[str]]:
        view, api = PolicyView(), AsyncApi(cluster.api_client())
        view.mark_synced()
        seen: list[list[str]] = []

        async def read() -> None:
            found = await read_policies(view, api, namespace, deadline=5)
            seen.append([p["metadata"]["name"] for p in found])

        try:
            await asyncio.to_thread(cluster.apply, policy_manifest("payments"), namespace=namespace)
            await read()  # the watch is late and nobody told the view: the policy cannot be found
            view.expect(namespace, "payments")  # what the policy webhook does during the CREATE
            await read()
            await asyncio.to_thread(cluster.kubectl, "delete", "cbp", "payments", "-n", namespace)
            await read()  # gone from the API: gone from the admission, whatever the view holds
            view.expect(namespace, "")  # a generateName create: only a LIST can find it
            await asyncio.to_thread(cluster.apply, policy_manifest("ledger"), namespace=namespace)
            await read()
        finally:
            await api.close()
        return seen

    assert asyncio.run(scenario()) == [[], ["payments"], [], ["ledger"]]
