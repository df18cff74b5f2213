"""Manifests of the real-node suites: a backend behind a Service, clients that call it through the
injected sidecar by its DNS name, and the policy between them. Every pod runs the Breakwater image
(`breakwater.testing.workload`) under the `restricted` Pod Security Standard."""

from __future__ import annotations

import json
from typing import Any

from tests.conftest import Cluster

RESTRICTED_LABELS = (
    "pod-security.kubernetes.io/enforce=restricted",
    "pod-security.kubernetes.io/enforce-version=latest",
)
RESTRICTED_CONTAINER = {
    "runAsNonRoot": True,
    "allowPrivilegeEscalation": False,
    "capabilities": {"drop": ["ALL"]},
    "seccompProfile": {"type": "RuntimeDefault"},
}
WORKLOAD = ["python", "-m", "breakwater.testing.workload"]
UPSTREAM_PORT = 8080
CLIENT_PORT = 8081
LISTEN_PORT = 15001
FALLBACK_BODY = '{"degraded":true}'


def container(name: str, image: str, args: list[str], **extra: Any) -> dict[str, Any]:
    return {
        "name": name,
        "image": image,
        "imagePullPolicy": "IfNotPresent",
        "command": [*WORKLOAD, *args],
        "securityContext": RESTRICTED_CONTAINER,
        **extra,
    }


def upstream(namespace: str, image: str, name: str = "payments") -> str:
    """The backend (not selected by the policy) and its Service."""
    labels = {"app": f"{name}-backend"}
    probe = {"httpGet": {"path": "/", "port": UPSTREAM_PORT}, "periodSeconds": 1}
    deployment = {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": f"{name}-backend", "namespace": namespace},
        "spec": {
            "replicas": 1,
            "selector": {"matchLabels": labels},
            "template": {
                "metadata": {"labels": labels},
                "spec": {
                    "containers": [
                        container(
                            "backend",
                            image,
                            ["upstream", "--port", str(UPSTREAM_PORT)],
                            ports=[{"containerPort": UPSTREAM_PORT}],
                            readinessProbe=probe,
                        )
                    ]
                },
            },
        },
    }
    service = {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": {"name": name, "namespace": namespace},
        "spec": {"selector": labels, "ports": [{"port": UPSTREAM_PORT, "targetPort": UPSTREAM_PORT}]},
    }
    return json.dumps({"apiVersion": "v1", "kind": "List", "items": [deployment, service]})


def policy(namespace: str, name: str = "payments", **spec: Any) -> str:
    body: dict[str, Any] = {
        "apiVersion": "breakwater.dev/v1alpha1",
        "kind": "CircuitBreakerPolicy",
        "metadata": {"name": name, "namespace": namespace},
        "spec": {
            "selector": {"matchLabels": {"app": "checkout"}},
            "upstreams": [
                {
                    "name": "payments",
                    "host": f"payments.{namespace}.svc.cluster.local",
                    "port": UPSTREAM_PORT,
                    "listenPort": LISTEN_PORT,
                }
            ],
            "trip": {"consecutiveFailures": 3},
            "timeout": "2s",
            "open": {"duration": "3s", "maxDuration": "1m", "jitter": 0},
            "halfOpen": {"permittedCalls": 1, "successesToClose": 1},
            "fallback": {"kind": "Static", "static": {"status": 503, "body": FALLBACK_BODY}},
            **spec,
        },
    }
    return json.dumps(body)


def client(namespace: str, image: str, *, replicas: int = 2, name: str = "checkout") -> str:
    """The app: calls the upstream by the URL the webhook put in its environment, every 0.1 s."""
    labels = {"app": "checkout", "deployment": name}
    app = container(
        "app",
        image,
        ["client", "--url", "$(BREAKWATER_PAYMENTS_URL)/pay", "--port", str(CLIENT_PORT)],
        ports=[{"containerPort": CLIENT_PORT}],
    )
    return json.dumps(
        {
            "apiVersion": "apps/v1",
            "kind": "Deployment",
            "metadata": {"name": name, "namespace": namespace},
            "spec": {
                "replicas": replicas,
                "selector": {"matchLabels": labels},
                "template": {"metadata": {"labels": labels}, "spec": {"containers": [app]}},
            },
        }
    )


def job(namespace: str, image: str, name: str = "settle") -> str:
    """A Job whose app makes one request through the sidecar as its very first act, then exits."""
    app = container("app", image, ["once", "--url", "$(BREAKWATER_PAYMENTS_URL)/settle"])
    return json.dumps(
        {
            "apiVersion": "batch/v1",
            "kind": "Job",
            "metadata": {"name": name, "namespace": namespace},
            "spec": {
                "backoffLimit": 0,
                "template": {
                    "metadata": {"labels": {"app": "checkout", "job": name}},
                    "spec": {"restartPolicy": "Never", "containers": [app]},
                },
            },
        }
    )


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


def upstream_state(body: dict[str, Any], name: str = "payments") -> str:
    for up in (body.get("status") or {}).get("upstreams") or ():
        if up.get("name") == name:
            return str(up.get("state"))
    return ""
