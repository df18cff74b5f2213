"""Writes into a namespace being deleted: the API server refuses creates there with a 403 that is a race,
not a missing permission. The operator meets it whenever a namespace with policies is deleted (the
policies go last: their finalizer is ours), and must neither fail nor log it as Forbidden."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterator

import pytest

from breakwater.k8s import configmaps
from breakwater.k8s.aio import AsyncApi
from breakwater.k8s.events import event_body
from tests.conftest import Cluster

pytestmark = pytest.mark.cluster

BLOCKER = "breakwater.test/hold"


@pytest.fixture
def terminating(cluster: Cluster, namespace: str) -> Iterator[str]:
    """`namespace`, kept in Terminating by an object with a finalizer nobody removes until the end."""
    held = {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "held", "finalizers": [BLOCKER]}}
    cluster.apply(json.dumps(held), namespace=namespace)
    cluster.kubectl("delete", "namespace", namespace, "--wait=false")
    cluster.wait_for(
        f"namespace {namespace} Terminating",
        lambda: (
            cluster.kubectl("get", "namespace", namespace, "-o", "jsonpath={.status.phase}").stdout
            == "Terminating"
        ),
    )
    yield namespace
    cluster.kubectl(
        "patch",
        "configmap",
        "held",
        "-n",
        namespace,
        "--type=merge",
        "-p",
        '{"metadata":{"finalizers":null}}',
    )


def test_the_sidecar_config_is_not_created_in_a_namespace_being_deleted(
    cluster: Cluster, terminating: str
) -> None:
    api = cluster.api_client()
    written = configmaps.put_key(
        api, namespace=terminating, name="breakwater-sidecar-config", key="p.json", value="{}"
    )
    assert written is False
    missing = cluster.kubectl("get", "configmap", "breakwater-sidecar-config", "-n", terminating, check=False)
    assert missing.returncode != 0


def test_an_event_for_a_namespace_being_deleted_is_dropped_quietly(
    cluster: Cluster, terminating: str
) -> None:
    async def post() -> bool:
        writer = AsyncApi(cluster.api_client())
        try:
            involved = {
                "apiVersion": "v1",
                "kind": "ConfigMap",
                "metadata": {"name": "held", "namespace": terminating},
            }
            body = event_body(involved=involved, kind="Normal", reason="Test", message="dropped")
            return await writer.create_event(terminating, body)
        finally:
            await writer.close()

    assert asyncio.run(post()) is False
