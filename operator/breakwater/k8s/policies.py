"""Writes to CircuitBreakerPolicy status, outside kopf's handler cycle (one status loop for all)."""

from __future__ import annotations

from typing import Any

from kubernetes import client

from breakwater.api.constants import GROUP, PLURAL, VERSION


def patch_status(
    api: client.ApiClient, *, namespace: str, name: str, status: dict[str, Any]
) -> dict[str, Any]:
    """Merge-patch the status subresource; returns the status as stored. A 404 (deleted) raises."""
    result = client.CustomObjectsApi(api).patch_namespaced_custom_object_status(
        GROUP,
        VERSION,
        namespace,
        PLURAL,
        name,
        {"status": status},
        _content_type="application/merge-patch+json",
    )
    stored: dict[str, Any] = dict(result.get("status") or {})
    return stored
