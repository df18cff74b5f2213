"""The MutatingWebhookConfiguration through which the API server calls the operator."""

from __future__ import annotations

import base64
import logging
from collections.abc import Callable
from typing import Any
from urllib.parse import quote

from breakwater.api.constants import GROUP, PLURAL, VERSION
from breakwater.k8s.client import ApiClient, ApiError, is_status, request

logger = logging.getLogger(__name__)

CONFIGURATIONS = "/apis/admissionregistration.k8s.io/v1/mutatingwebhookconfigurations"

WEBHOOK_NAME = "inject.breakwater.dev"
INJECT_SIDECAR_ID = "inject-sidecar"  # kopf's handler id, which is its path on the webhook server
# Policy CREATEs, so that the pod webhook knows the name of a policy before it is persisted
# (controller/admission.py). It never changes or refuses a policy.
POLICY_WEBHOOK_NAME = "policies.breakwater.dev"
EXPECT_POLICY_ID = "expect-policy"


def desired_configuration(
    *,
    name: str,
    client_config: Callable[[str], dict[str, Any]],
    namespace_selector: dict[str, Any],
    failure_policy: str,
    timeout_seconds: int,
) -> dict[str, Any]:
    """The whole configuration: the sidecar injection, and the policy CREATEs the pod webhook needs
    to know of. `client_config(handler_id)` says where each is served. `failure_policy` is the pod
    webhook's: the policy webhook only takes note of names, so it is always Ignore (an operator that
    cannot be reached must never block a policy), as in the chart."""

    def webhook(
        webhook_name: str, handler_id: str, rule: dict[str, Any], failure_policy: str
    ) -> dict[str, Any]:
        return {
            "name": webhook_name,
            "clientConfig": client_config(handler_id),
            "rules": [{**rule, "operations": ["CREATE"], "scope": "Namespaced"}],
            "namespaceSelector": namespace_selector,
            "failurePolicy": failure_policy,
            "timeoutSeconds": timeout_seconds,
            "sideEffects": "None",
            "admissionReviewVersions": ["v1"],
            "reinvocationPolicy": "Never",
            "matchPolicy": "Equivalent",
        }

    return {
        "apiVersion": "admissionregistration.k8s.io/v1",
        "kind": "MutatingWebhookConfiguration",
        "metadata": {"name": name, "labels": {"app.kubernetes.io/managed-by": "breakwater"}},
        "webhooks": [
            webhook(
                WEBHOOK_NAME,
                INJECT_SIDECAR_ID,
                {"apiGroups": [""], "apiVersions": ["v1"], "resources": ["pods"]},
                failure_policy,
            ),
            webhook(
                POLICY_WEBHOOK_NAME,
                EXPECT_POLICY_ID,
                {"apiGroups": [GROUP], "apiVersions": [VERSION], "resources": [PLURAL]},
                "Ignore",
            ),
        ],
    }


def apply_configuration(api: ApiClient, body: dict[str, Any]) -> None:
    """Create or replace the whole configuration (the operator owns it: `--webhook-manage=full`)."""
    name = body["metadata"]["name"]
    try:
        current = request(api, "GET", _path(name))
    except ApiError as exc:
        if not is_status(exc, 404):
            raise
        request(api, "POST", CONFIGURATIONS, body)
        logger.info("created MutatingWebhookConfiguration %s", name)
        return
    body = {
        **body,
        "metadata": {**body["metadata"], "resourceVersion": current["metadata"]["resourceVersion"]},
    }
    request(api, "PUT", _path(name), body)
    logger.info("updated MutatingWebhookConfiguration %s", name)


def patch_ca_bundle(api: ApiClient, *, name: str, ca_pem: bytes) -> bool:
    """Keep the caBundle of every webhook in `name` equal to our CA (`--webhook-manage=ca-only`)."""
    current = request(api, "GET", _path(name))
    wanted = base64.b64encode(ca_pem).decode()
    ops = [
        {
            "op": "replace" if _ca_bundle(hook) else "add",
            "path": f"/webhooks/{i}/clientConfig/caBundle",
            "value": wanted,
        }
        for i, hook in enumerate(current.get("webhooks") or ())
        if _ca_bundle(hook) != wanted
    ]
    if not ops:
        return False
    request(api, "PATCH", _path(name), ops, content_type="application/json-patch+json")
    logger.info("patched caBundle of MutatingWebhookConfiguration %s", name)
    return True


def carries_ca(api: ApiClient, *, name: str, ca_pem: bytes) -> bool:
    """Whether every webhook of `name` trusts `ca_pem` (its caBundle holds that certificate)."""
    try:
        current = request(api, "GET", _path(name))
    except ApiError as exc:  # absent yet (404), or not ours to read: not trusted
        logger.debug("reading MutatingWebhookConfiguration %s: %s %s", name, exc.status, exc.reason)
        return False
    hooks = current.get("webhooks") or ()
    wanted = ca_pem.strip()
    return bool(hooks) and all(
        (bundle := _ca_bundle(hook)) and wanted in base64.b64decode(bundle) for hook in hooks
    )


def delete_configuration(api: ApiClient, *, name: str) -> None:
    try:
        request(api, "DELETE", _path(name))
    except ApiError as exc:
        if not is_status(exc, 404):
            raise


def _path(name: str) -> str:
    return f"{CONFIGURATIONS}/{quote(name, safe='')}"


def _ca_bundle(hook: dict[str, Any]) -> str:
    return str((hook.get("clientConfig") or {}).get("caBundle") or "")
