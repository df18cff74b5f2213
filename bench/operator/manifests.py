"""The policies, pods and Deployments the operator benchmarks create.

Everything talks to 127.0.0.0/8 only.
"""

from __future__ import annotations

from typing import Any

# -- manifests -------------------------------------------------------------------------------------------


def policy_body(
    name: str,
    *,
    app: str,
    port: int = 8080,
    host: str = "127.0.0.1",
    upstream: str = "payments",
    failures: int = 3,
    open_for: str = "1s",
    timeout: str = "2s",
    adaptive: bool = False,
) -> dict[str, Any]:
    body: dict[str, Any] = {
        "apiVersion": "breakwater.dev/v1alpha1",
        "kind": "CircuitBreakerPolicy",
        "metadata": {"name": name},
        "spec": {
            "selector": {"matchLabels": {"app": app}},
            "upstreams": [{"name": upstream, "host": host, "port": port, "listenPort": 15210}],
            "trip": {"consecutiveFailures": failures},
            "open": {"duration": open_for, "maxDuration": "5m", "jitter": 0},
            "halfOpen": {"permittedCalls": 1, "successesToClose": 1},
            "timeout": timeout,
        },
    }
    if adaptive:
        body["spec"]["adaptive"] = {"enabled": True}
    return body


def pod_template(app: str, node: str) -> dict[str, Any]:
    return {
        "metadata": {"labels": {"app": app}},
        "spec": {
            "nodeName": node,
            "terminationGracePeriodSeconds": 0,
            "containers": [{"name": "app", "image": "registry.example/app:1"}],
        },
    }


def deployment_body(name: str, *, app: str, node: str, replicas: int) -> dict[str, Any]:
    template = pod_template(app, node)
    template["metadata"]["labels"]["deployment"] = name
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": name},
        "spec": {
            "replicas": replicas,
            "selector": {"matchLabels": {"app": app, "deployment": name}},
            "template": template,
        },
    }
