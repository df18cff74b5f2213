"""One configured client for the Kubernetes API, from a kubeconfig or the in-cluster service account."""

from __future__ import annotations

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


def is_status(exc: BaseException, code: int) -> bool:
    return isinstance(exc, client.ApiException) and exc.status == code


NAMESPACE_TERMINATING = "NamespaceTerminating"
"""The cause the API server gives when it refuses a create in a namespace being deleted (a 403)."""


def is_namespace_terminating(status: int, body: str) -> bool:
    """Whether a 403 says the namespace is being deleted: an expected race, not a missing permission."""
    return status == 403 and NAMESPACE_TERMINATING in body
