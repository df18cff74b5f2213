"""The metadata-only pod watch on a real API server: list, watch, finished pods, pagination."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pytest

from breakwater.api.constants import ANNOTATION_INJECTED
from breakwater.controller.pods import PodIndex, facts
from breakwater.k8s.client import core_path, request
from breakwater.k8s.listwatch import ListWatch
from tests.conftest import Cluster

pytestmark = pytest.mark.timeout(120)


def pod_body(name: str, *, node: str | None = None, labels: dict[str, str] | None = None) -> dict[str, Any]:
    spec: dict[str, Any] = {"containers": [{"name": "app", "image": "registry.example/app:1"}]}
    if node:
        spec["nodeName"] = node  # kwok runs it; without a node (no scheduler here) it stays Pending
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": name, "labels": labels or {"app": "checkout"}},
        "spec": spec,
    }


def create(cluster: Cluster, namespace: str, *bodies: dict[str, Any]) -> None:
    cluster.apply(
        json.dumps({"apiVersion": "v1", "kind": "List", "items": list(bodies)}), namespace=namespace
    )


def finish(cluster: Cluster, namespace: str, name: str) -> None:
    """What the kubelet reports when a pod's containers exited 0."""
    patch = json.dumps({"status": {"phase": "Succeeded"}})
    cluster.kubectl(
        "patch", "pod", name, "-n", namespace, "--subresource=status", "--type=merge", "-p", patch
    )


def phase(cluster: Cluster, namespace: str, name: str) -> str:
    return cluster.kubectl("get", "pod", name, "-n", namespace, "-o", "jsonpath={.status.phase}").stdout


async def eventually(what: str, check: Callable[[], bool]) -> None:
    for _ in range(300):
        if check():
            return
        await asyncio.sleep(0.05)
    raise AssertionError(f"timed out after 15 s waiting for {what}")


@pytest.fixture
def api(cluster: Cluster) -> Iterator[Any]:
    client = cluster.api_client()
    yield client
    client.close()


async def test_the_index_follows_pods_created_relabelled_finished_and_deleted(
    cluster: Cluster, namespace: str, api: Any
) -> None:
    node = cluster.node_name
    create(
        cluster,
        namespace,
        pod_body("a", node=node),
        pod_body("b", node=node),
        pod_body("c"),  # Pending: still counts
        pod_body("done"),
    )
    finish(cluster, namespace, "done")
    for name in ("a", "b"):
        cluster.wait_for(f"pod {name} Running", lambda n=name: phase(cluster, namespace, n) == "Running")

    index = PodIndex()
    changed: list[str] = []
    index.listeners.append(changed.append)
    watch = ListWatch(api, index, facts)  # cluster-wide, as the operator runs by default
    started = time.monotonic()
    watch.start(asyncio.get_running_loop())
    try:
        await asyncio.wait_for(index.synced.wait(), 30)

        def names() -> set[str]:
            return {p.name for p in index.in_namespace(namespace)}

        assert names() == {"a", "b", "c"}  # the Succeeded pod is left out by the field selector
        assert namespace in changed
        a = index.get(namespace, "a")
        assert a is not None
        assert a.labels == (("app", "checkout"),)
        assert not a.injected
        assert a.uid

        create(cluster, namespace, pod_body("d"))
        await eventually("the new pod d", lambda: index.get(namespace, "d") is not None)

        changed.clear()
        cluster.kubectl("label", "pod", "a", "-n", namespace, "tier=web")
        await eventually("a's new label", lambda: dict(index.get(namespace, "a").labels).get("tier") == "web")  # type: ignore[union-attr]
        assert namespace in changed
        cluster.kubectl("annotate", "pod", "a", "-n", namespace, f"{ANNOTATION_INJECTED}=true")
        await eventually("a injected", lambda: index.get(namespace, "a").injected)  # type: ignore[union-attr]

        finish(cluster, namespace, "b")  # leaves the field selection: arrives as DELETED
        await eventually("b finished", lambda: index.get(namespace, "b") is None)

        cluster.kubectl("delete", "pod", "d", "a", "-n", namespace, "--wait=false")
        await eventually("a and d deleted", lambda: names() == {"c"})
        assert watch.lists == 1  # no relist was needed along the way
    finally:
        stopping = time.monotonic()
        watch.stop()
        assert time.monotonic() - stopping < 3
    assert not any(t.is_alive() for t in watch._threads)
    assert time.monotonic() - started < 60


async def test_a_big_namespace_is_listed_completely_across_pages(
    cluster: Cluster, namespace: str, api: Any
) -> None:
    n = 1200

    def create_all() -> None:  # eight threads on the client's pool of kept-alive connections
        with ThreadPoolExecutor(max_workers=8) as pool:
            bodies = [pod_body(f"p-{i:04d}", labels={"app": "bulk", "shard": str(i % 7)}) for i in range(n)]
            list(pool.map(lambda body: request(api, "POST", core_path(namespace, "pods"), body), bodies))

    await asyncio.to_thread(create_all)
    for name in ("p-0000", "p-0001"):
        finish(cluster, namespace, name)

    index = PodIndex()
    watch = ListWatch(api, index, facts, namespaces=(namespace,))
    watch.start(asyncio.get_running_loop())
    try:
        await asyncio.wait_for(index.synced.wait(), 30)
        pods = index.in_namespace(namespace)
        assert len(pods) == n - 2
        assert index.get(namespace, "p-0000") is None
        assert index.get(namespace, "p-1199") is not None
        assert watch.pages_listed == 3  # 500 + 500 + 198 pods
        assert len({p.labels for p in pods}) == 7
        assert len({id(p.labels) for p in pods}) == 7  # equal label sets are one shared tuple
    finally:
        watch.stop()
