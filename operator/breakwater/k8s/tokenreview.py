"""Who sent a report: the API server's verdict on a pod-bound service-account token."""

from __future__ import annotations

from dataclasses import dataclass

from breakwater.errors import NotAuthenticated
from breakwater.k8s.client import ApiClient, request

POD_NAME_EXTRA = "authentication.kubernetes.io/pod-name"
POD_UID_EXTRA = "authentication.kubernetes.io/pod-uid"


@dataclass(frozen=True)
class PodIdentity:
    namespace: str
    pod: str
    pod_uid: str
    service_account: str


def review(api: ApiClient, token: str, *, audience: str) -> PodIdentity:
    body = {
        "apiVersion": "authentication.k8s.io/v1",
        "kind": "TokenReview",
        "spec": {"token": token, "audiences": [audience]},
    }
    status = request(api, "POST", "/apis/authentication.k8s.io/v1/tokenreviews", body).get("status") or {}
    if not status.get("authenticated"):
        raise NotAuthenticated(status.get("error") or "token not authenticated")
    if audience not in (status.get("audiences") or []):
        raise NotAuthenticated(f"token is not for audience {audience!r}")
    user = status.get("user") or {}
    username = user.get("username") or ""
    extra = user.get("extra") or {}
    parts = username.split(":")
    if len(parts) != 4 or parts[:2] != ["system", "serviceaccount"]:
        raise NotAuthenticated(f"{username!r} is not a service account")
    pod = (extra.get(POD_NAME_EXTRA) or [""])[0]
    uid = (extra.get(POD_UID_EXTRA) or [""])[0]
    if not pod:
        raise NotAuthenticated("the token is not bound to a pod")
    return PodIdentity(namespace=parts[2], pod=pod, pod_uid=uid, service_account=parts[3])
