"""Helpers of the suites that run the operator (`breakwater.testing.operator.OperatorProcess`): the CRD,
manifests of policies and Deployments, reading what the API holds."""

from __future__ import annotations

import json
import textwrap
import urllib.error
import urllib.request
from typing import Any

from prometheus_client.parser import text_string_to_metric_families

from breakwater.testing.sidecars import SidecarFleet
from tests.conftest import Cluster


def install_crd(cluster: Cluster) -> None:
    """Apply the CRD exactly as the models generate it (a drift test keeps crds/ equal to this)."""
    from breakwater.api.crdgen import crd_yaml

    cluster.kubectl("apply", "--server-side", "--force-conflicts", "-f", "-", input=crd_yaml())
    cluster.wait_established("circuitbreakerpolicies.breakwater.dev")


def opt_in(cluster: Cluster, namespace: str, *, restricted: bool = False) -> None:
    labels = ["breakwater.dev/injection=enabled"]
    if restricted:
        labels.append("pod-security.kubernetes.io/enforce=restricted")
    cluster.kubectl("label", "namespace", namespace, "--overwrite", *labels)


def policy_manifest(name: str, *, app: str = "checkout", upstreams: str = "", **spec: Any) -> str:
    upstreams = upstreams or textwrap.dedent(
        """
        - name: payments
          host: payments.shop.svc.cluster.local
          port: 8080
          listenPort: 15210
        """
    )
    body = {
        "apiVersion": "breakwater.dev/v1alpha1",
        "kind": "CircuitBreakerPolicy",
        "metadata": {"name": name},
        "spec": {"selector": {"matchLabels": {"app": app}}, **spec},
    }
    text = json.dumps(body)
    import yaml

    doc = yaml.safe_load(text)
    doc["spec"]["upstreams"] = yaml.safe_load(upstreams)
    return str(yaml.safe_dump(doc))


RESTRICTED_CONTAINER = {
    "securityContext": {
        "runAsNonRoot": True,
        "runAsUser": 1000,
        "allowPrivilegeEscalation": False,
        "capabilities": {"drop": ["ALL"]},
        "seccompProfile": {"type": "RuntimeDefault"},
    }
}


def deployment_manifest(
    name: str,
    *,
    node: str,
    app: str = "checkout",
    replicas: int = 2,
    annotations: dict[str, str] | None = None,
) -> str:
    import yaml

    body = {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": name},
        "spec": {
            "replicas": replicas,
            "selector": {"matchLabels": {"app": app, "deployment": name}},
            "template": {
                "metadata": {"labels": {"app": app, "deployment": name}, "annotations": annotations or {}},
                "spec": {
                    "nodeName": node,
                    "containers": [
                        {"name": "app", "image": "registry.example/app:1", **RESTRICTED_CONTAINER}
                    ],
                },
            },
        },
    }
    return str(yaml.safe_dump(body))


def pods(cluster: Cluster, namespace: str, selector: str) -> list[dict[str, Any]]:
    out = cluster.kubectl("get", "pods", "-n", namespace, "-l", selector, "-o", "json").stdout
    items: list[dict[str, Any]] = json.loads(out)["items"]
    return items


def policy(cluster: Cluster, namespace: str, name: str) -> dict[str, Any]:
    out = cluster.kubectl("get", "cbp", name, "-n", namespace, "-o", "json").stdout
    body: dict[str, Any] = json.loads(out)
    return body


def condition(body: dict[str, Any], kind: str) -> dict[str, Any]:
    for cond in (body.get("status") or {}).get("conditions") or ():
        if cond.get("type") == kind:
            return dict(cond)
    return {}


def wait_accepted(cluster: Cluster, namespace: str, name: str, *, timeout: float = 30) -> None:
    """Wait until the operator has rendered the policy (`Accepted=True`)."""
    cluster.wait_for(
        f"policy {namespace}/{name} Accepted",
        lambda: condition(policy(cluster, namespace, name), "Accepted").get("status") == "True",
        timeout=timeout,
    )


def breaker_policy(name: str, port: int, *, mode: str = "Enforce", open_for: str = "3s") -> str:
    return json.dumps(
        {
            "apiVersion": "breakwater.dev/v1alpha1",
            "kind": "CircuitBreakerPolicy",
            "metadata": {"name": name},
            "spec": {
                "selector": {"matchLabels": {"app": "checkout"}},
                "upstreams": [{"name": "payments", "host": "127.0.0.1", "port": port, "listenPort": 15210}],
                "mode": mode,
                "trip": {"consecutiveFailures": 3},
                "open": {"duration": open_for, "maxDuration": "5m", "jitter": 0},
                "halfOpen": {"permittedCalls": 1, "successesToClose": 1},
            },
        }
    )


def upstream_status(cluster: Cluster, namespace: str, name: str) -> dict[str, Any]:
    body = policy(cluster, namespace, name)
    for up in (body.get("status") or {}).get("upstreams") or ():
        if up["name"] == "payments":
            return dict(up)
    return {}


def call(url: str) -> int:
    """One GET; its status code, also for an error answer."""
    try:
        with urllib.request.urlopen(url, timeout=5) as resp:
            return int(resp.status)
    except urllib.error.HTTPError as exc:
        return int(exc.code)


def start_clients(cluster: Cluster, namespace: str, fleet: SidecarFleet, replicas: int) -> None:
    """Once policy `payments` is Accepted: a client Deployment whose injected pods each get a real
    sidecar process (`fleet`), ready."""
    wait_accepted(cluster, namespace, "payments")
    cluster.apply(
        deployment_manifest("checkout", node=cluster.node_name, replicas=replicas), namespace=namespace
    )

    def all_started() -> bool:
        fleet.sync()
        return len(fleet.sidecars) == replicas

    cluster.wait_for(f"{replicas} injected, running pods", all_started, timeout=60, interval=0.5)
    fleet.wait_ready()


Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


def scrape(url: str) -> tuple[set[str], Samples]:
    """GET a /metrics page and parse it as Prometheus would: family names and every sample."""
    with urllib.request.urlopen(url, timeout=10) as resp:
        assert resp.headers["Content-Type"].startswith("text/plain"), resp.headers["Content-Type"]
        text = resp.read().decode()
    families, samples = set(), {}
    for family in text_string_to_metric_families(text):
        families.add(family.name)
        for sample in family.samples:
            samples[(sample.name, frozenset(sample.labels.items()))] = sample.value
    return families, samples


def value(samples: Samples, name: str, **labels: str) -> float:
    """The sum of `name`'s samples whose labels include `labels`."""
    wanted = set(labels.items())
    return sum(v for (n, ls), v in samples.items() if n == name and wanted <= ls)
