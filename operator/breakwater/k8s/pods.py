"""Single pod reads, for the rare moments the operator's pod index is not available yet."""

from __future__ import annotations

from breakwater.k8s.client import ApiClient, ApiError, core_path, is_status, request


def labels(api: ApiClient, *, namespace: str, name: str) -> dict[str, str] | None:
    try:
        pod = request(api, "GET", core_path(namespace, "pods", name))
    except ApiError as exc:
        if is_status(exc, 404):
            return None
        raise
    return dict((pod.get("metadata") or {}).get("labels") or {})
