"""Single pod reads, for the rare moments the operator's pod index is not available yet."""

from __future__ import annotations

from kubernetes import client

from breakwater.k8s.client import is_status


def labels(api: client.ApiClient, *, namespace: str, name: str) -> dict[str, str] | None:
    try:
        pod = client.CoreV1Api(api).read_namespaced_pod(name, namespace)
    except client.ApiException as exc:
        if is_status(exc, 404):
            return None
        raise
    return dict(pod.metadata.labels or {})
