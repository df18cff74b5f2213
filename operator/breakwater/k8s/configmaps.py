"""The per-namespace ConfigMap that carries every policy's rendered sidecar config, one key per policy.

Each key is written with a JSON merge patch that touches only that key, so two policies of one
namespace reconciled at the same time never overwrite each other (no read-modify-write).
"""

from __future__ import annotations

import logging

from breakwater.k8s.client import ApiClient, ApiError, core_path, is_namespace_terminating, is_status, request

logger = logging.getLogger(__name__)

MANAGED_BY = {"app.kubernetes.io/managed-by": "breakwater", "app.kubernetes.io/component": "sidecar-config"}


def put_key(
    api: ApiClient,
    *,
    namespace: str,
    name: str,
    key: str,
    value: str,
    component: str = "sidecar-config",
) -> bool:
    """Write one key; False when the namespace is being deleted (nothing there needs a config then)."""
    labels = {**MANAGED_BY, "app.kubernetes.io/component": component}
    body = {"metadata": {"labels": labels}, "data": {key: value}}
    patch = core_path(namespace, "configmaps", name)
    try:
        request(api, "PATCH", patch, body, content_type="application/merge-patch+json")
        return True
    except ApiError as exc:
        if not is_status(exc, 404):
            raise
    try:
        request(
            api,
            "POST",
            core_path(namespace, "configmaps"),
            {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": name, "labels": labels}}
            | {"data": {key: value}},
        )
        logger.info("created ConfigMap %s/%s", namespace, name)
    except ApiError as exc:
        if is_namespace_terminating(exc.status, str(exc.body)):
            logger.info("not creating ConfigMap %s/%s: the namespace is being deleted", namespace, name)
            return False
        if not is_status(exc, 409):
            raise
        request(
            api, "PATCH", patch, body, content_type="application/merge-patch+json"
        )  # lost a creation race: patch instead
    return True


def remove_key(api: ApiClient, *, namespace: str, name: str, key: str) -> None:
    try:
        # A merge patch with null removes the key; the ConfigMap stays so mounts never break.
        request(
            api,
            "PATCH",
            core_path(namespace, "configmaps", name),
            {"data": {key: None}},
            content_type="application/merge-patch+json",
        )
    except ApiError as exc:
        if not is_status(exc, 404):
            raise


def read(api: ApiClient, *, namespace: str, name: str) -> dict[str, str]:
    try:
        cm = request(api, "GET", core_path(namespace, "configmaps", name))
    except ApiError as exc:
        if is_status(exc, 404):
            return {}
        raise
    return dict(cm.get("data") or {})
