"""Manifests for real pods (the node suites and `make demo NODE=real`): a backend behind a Service,
clients that call it through the injected sidecar by its DNS name, and the policy between them. Every
pod runs the Breakwater image (`breakwater.testing.workload`) under the `restricted` Pod Security
Standard."""

from __future__ import annotations

import json
from typing import Any

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
LISTEN_PORT = 15210
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
    # A 5 s probe timeout (the default is 1 s): on a loaded node a stalled answer to /healthz must not
    # take the only backend out of its Service while a test's client is calling it.
    probe = {"httpGet": {"path": "/healthz", "port": UPSTREAM_PORT}, "periodSeconds": 1, "timeoutSeconds": 5}
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


# Ready once its stats port answers: a started container is not yet listening, and the suites ask it.
CLIENT_READY = {"httpGet": {"path": "/stats", "port": CLIENT_PORT}, "periodSeconds": 1}


def client(namespace: str, image: str, *, replicas: int = 2, name: str = "checkout") -> str:
    """The app: calls the upstream by the URL the webhook put in its environment, every 0.1 s."""
    labels = {"app": "checkout", "deployment": name}
    app = container(
        "app",
        image,
        ["client", "--url", "$(BREAKWATER_PAYMENTS_URL)/pay", "--port", str(CLIENT_PORT)],
        ports=[{"containerPort": CLIENT_PORT}],
        readinessProbe=CLIENT_READY,
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


def client_pod(namespace: str, image: str, name: str, *, path: str = "/pay") -> str:
    """One client pod, selected by the policy, created directly (admitted in the create call); it calls
    `path` on the upstream (pods calling paths of their own see a backend failing for some of them)."""
    app = container(
        "app",
        image,
        ["client", "--url", f"$(BREAKWATER_PAYMENTS_URL){path}", "--port", str(CLIENT_PORT)],
        ports=[{"containerPort": CLIENT_PORT}],
        readinessProbe=CLIENT_READY,
    )
    return json.dumps(
        {
            "apiVersion": "v1",
            "kind": "Pod",
            "metadata": {
                "name": name,
                "namespace": namespace,
                "labels": {"app": "checkout", "outage": "yes"},
            },
            "spec": {"containers": [app]},
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
