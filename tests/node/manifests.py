"""Cluster helpers of the real-node suites; the manifests themselves are `breakwater.testing.manifests`
(shared with `make demo NODE=real`)."""

from __future__ import annotations

import json
import time
from typing import Any

from breakwater.testing.manifests import (
    CLIENT_PORT,
    FALLBACK_BODY,
    LISTEN_PORT,
    RESTRICTED_CONTAINER,
    RESTRICTED_LABELS,
    UPSTREAM_PORT,
    client,
    client_pod,
    job,
    policy,
    upstream,
)
from tests.chart import WEBHOOK_NAME
from tests.conftest import Cluster

__all__ = [
    "CLIENT_PORT",
    "FALLBACK_BODY",
    "LISTEN_PORT",
    "RESTRICTED_CONTAINER",
    "RESTRICTED_LABELS",
    "UPSTREAM_PORT",
    "client",
    "client_pod",
    "job",
    "policy",
    "upstream",
]


def proxy_get(cluster: Cluster, path: str) -> Any:
    """GET through the API server's proxy (it runs in the node's namespace and reaches pod IPs)."""
    return json.loads(cluster.kubectl("get", "--raw", path).stdout)


def set_upstream(cluster: Cluster, namespace: str, verb: str, name: str = "payments") -> Any:
    return proxy_get(
        cluster, f"/api/v1/namespaces/{namespace}/services/{name}:{UPSTREAM_PORT}/proxy/control/{verb}"
    )


def client_stats(cluster: Cluster, namespace: str, pod: str, *, reset: bool = False) -> dict[str, Any]:
    query = "?reset=1" if reset else ""
    stats: dict[str, Any] = proxy_get(
        cluster, f"/api/v1/namespaces/{namespace}/pods/{pod}:{CLIENT_PORT}/proxy/stats{query}"
    )
    return stats


def pods(cluster: Cluster, namespace: str, selector: str) -> list[dict[str, Any]]:
    out = cluster.kubectl("get", "pods", "-n", namespace, "-l", selector, "-o", "json").stdout
    items: list[dict[str, Any]] = json.loads(out)["items"]
    return items


def ready_pods(
    cluster: Cluster, namespace: str, selector: str, count: int, *, timeout: float = 120
) -> list[dict[str, Any]]:
    def check() -> list[dict[str, Any]]:
        found = [
            p
            for p in pods(cluster, namespace, selector)
            if not p["metadata"].get("deletionTimestamp")
            and any(c["type"] == "Ready" and c["status"] == "True" for c in p["status"].get("conditions", []))
        ]
        return found if len(found) == count else []

    result: list[dict[str, Any]] = cluster.wait_for(
        f"{count} Ready pods ({selector})", check, timeout=timeout, interval=0.5
    )
    return result


def cbp(cluster: Cluster, namespace: str, name: str = "payments") -> dict[str, Any]:
    body: dict[str, Any] = json.loads(
        cluster.kubectl("get", "cbp", name, "-n", namespace, "-o", "json").stdout
    )
    return body


def condition(body: dict[str, Any], kind: str) -> dict[str, Any]:
    for cond in (body.get("status") or {}).get("conditions") or ():
        if cond.get("type") == kind:
            return dict(cond)
    return {}


def wait_reported_uninjected(cluster: Cluster, namespace: str, names: list[str]) -> None:
    """Until the policy's Ready condition is PodsNotInjected and names each of the pods."""
    cluster.wait_for(
        "the uninjected pods reported (PodsNotInjected)",
        lambda: (
            (ready := condition(cbp(cluster, namespace), "Ready")).get("reason") == "PodsNotInjected"
            and all(name in ready.get("message", "") for name in names)
        ),
        timeout=90,
    )


def inject_webhook(configuration: dict[str, Any]) -> dict[str, Any]:
    """The sidecar-injection webhook of a MutatingWebhookConfiguration."""
    webhook: dict[str, Any] = next(w for w in configuration["webhooks"] if w["name"] == WEBHOOK_NAME)
    return webhook


def upstream_state(body: dict[str, Any], name: str = "payments") -> str:
    for up in (body.get("status") or {}).get("upstreams") or ():
        if up.get("name") == name:
            return str(up.get("state"))
    return ""


def patch_spec(cluster: Cluster, namespace: str, spec: dict[str, Any], name: str = "payments") -> None:
    """A merge patch of the policy's spec, as `kubectl patch --type=merge` sends it."""
    patch = json.dumps({"spec": spec})
    cluster.kubectl("patch", "cbp", name, "-n", namespace, "--type=merge", "-p", patch)


def answers_over(
    cluster: Cluster, namespace: str, pods: list[str], seconds: float = 1.0
) -> list[dict[str, int]]:
    """What each client app got (status and fallback kind: count) over the next `seconds`."""
    for pod in pods:
        client_stats(cluster, namespace, pod, reset=True)
    time.sleep(seconds)
    return [dict(client_stats(cluster, namespace, pod)["counts"]) for pod in pods]
