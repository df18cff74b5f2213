"""One configured client for the Kubernetes API, from a kubeconfig or the in-cluster service account,
and `request`: one synchronous call with it, JSON in and out.

The operator uses the kubernetes client for its configuration (kubeconfig, in-cluster token, TLS) and
its connection pool, not for its typed API classes: `client.CoreV1Api` alone imports 250 model modules
on first use, about 23 MiB of RSS that stays (measured, bench/results/operator-memory.md), for the
handful of ConfigMap, Secret, Pod, TokenReview and webhook-configuration calls made here.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any
from urllib.parse import quote, urlencode

from kubernetes import client, config


def api_client(kubeconfig: str | None = None) -> client.ApiClient:
    configuration = client.Configuration()
    if kubeconfig:
        config.load_kube_config(config_file=kubeconfig, client_configuration=configuration)
    else:
        try:
            config.load_incluster_config(client_configuration=configuration)
        except config.ConfigException:
            config.load_kube_config(client_configuration=configuration)
    return client.ApiClient(configuration)


def request(
    api: client.ApiClient,
    method: str,
    path: str,
    body: Any = None,
    *,
    content_type: str = "application/json",
    params: Mapping[str, str] | None = None,
) -> dict[str, Any]:
    """One API call with the client's server, TLS and credentials; the decoded answer. An error answer
    raises `client.ApiException` with its status and body, as the typed API classes do."""
    configuration = api.configuration
    headers = {**api.default_headers, "Accept": "application/json", "Content-Type": content_type}
    for auth in configuration.auth_settings().values():  # refreshes an expiring token itself
        if auth.get("in") == "header" and auth.get("value"):
            headers[auth["key"]] = auth["value"]
    url = f"{configuration.host}{path}" + (f"?{urlencode(params)}" if params else "")
    response = api.rest_client.request(method, url, headers=headers, body=body)
    data = response.read()
    if not 200 <= response.status < 300:
        raise client.ApiException(http_resp=response)
    found: dict[str, Any] = json.loads(data) if data else {}
    return found


def core_path(namespace: str, plural: str, name: str = "") -> str:
    """The path of a core (v1) namespaced collection, or of one object in it."""
    path = f"/api/v1/namespaces/{quote(namespace, safe='')}/{plural}"
    return f"{path}/{quote(name, safe='')}" if name else path


def is_status(exc: BaseException, code: int) -> bool:
    return isinstance(exc, client.ApiException) and exc.status == code


NAMESPACE_TERMINATING = "NamespaceTerminating"
"""The cause the API server gives when it refuses a create in a namespace being deleted (a 403)."""


def is_namespace_terminating(status: int, body: str) -> bool:
    """Whether a 403 says the namespace is being deleted: an expected race, not a missing permission."""
    return status == 403 and NAMESPACE_TERMINATING in body
