"""One configured client for the Kubernetes API, from a kubeconfig or the in-cluster service account,
and `request`: one synchronous call with it, JSON in and out.

Our own small client (k8s/kubeconfig.py, k8s/transport.py), not the kubernetes package: the operator
only ever needed its configuration and connection pool, and importing it alone kept 10.8 MiB of RSS
(its typed API classes another 23 MiB on first use, bench/results/operator-memory.md).
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any
from urllib.parse import quote

from breakwater.errors import KubernetesError
from breakwater.k8s import kubeconfig
from breakwater.k8s.transport import ApiClient

__all__ = ["ApiClient", "ApiError", "api_client", "core_path", "is_status", "request"]


class ApiError(KubernetesError):
    """An error answer of the API server: `status` (HTTP), `reason` (its phrase), `body` (the Status)."""

    def __init__(self, status: int, body: str, reason: str = "") -> None:
        super().__init__(status, body)
        self.reason = reason


def api_client(kubeconfig_path: str | None = None) -> ApiClient:
    """`--kubeconfig` if given, else in-cluster, else $KUBECONFIG or ~/.kube/config; a kubeconfig that
    cannot be used raises `kubeconfig.KubeconfigError` (one line, no traceback at the command line)."""
    return ApiClient(kubeconfig.load(kubeconfig_path))


def request(
    api: ApiClient,
    method: str,
    path: str,
    body: Any = None,
    *,
    content_type: str = "application/json",
    params: Mapping[str, str] | None = None,
) -> dict[str, Any]:
    """One API call with the client's server, TLS and credentials; the decoded answer. An error answer
    raises `ApiError` with its status, reason and body."""
    data = json.dumps(body).encode() if body is not None else None
    answer = api.call(method, path, data, api.headers(content_type=content_type), params=params)
    if not 200 <= answer.status < 300:
        raise ApiError(answer.status, answer.data.decode(errors="replace"), answer.reason)
    found: dict[str, Any] = json.loads(answer.data) if answer.data else {}
    return found


def core_path(namespace: str, plural: str, name: str = "") -> str:
    """The path of a core (v1) namespaced collection, or of one object in it."""
    path = f"/api/v1/namespaces/{quote(namespace, safe='')}/{plural}"
    return f"{path}/{quote(name, safe='')}" if name else path


def is_status(exc: BaseException, code: int) -> bool:
    return isinstance(exc, KubernetesError) and exc.status == code


NAMESPACE_TERMINATING = "NamespaceTerminating"
"""The cause the API server gives when it refuses a create in a namespace being deleted (a 403)."""


def is_namespace_terminating(status: int, body: str) -> bool:
    """Whether a 403 says the namespace is being deleted: an expected race, not a missing permission."""
    return status == 403 and NAMESPACE_TERMINATING in body
