"""The operator's synchronous API calls (`k8s.client.request`) against a real loopback API server: what
each sends, how answers and errors (`ApiError` with status, reason and body) come back, connection
reuse, and that the operator runs without the kubernetes package at all."""

from __future__ import annotations

import base64
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor

import pytest

from breakwater.errors import KubernetesError
from breakwater.k8s import configmaps, pods, tokenreview, webhooks
from breakwater.k8s.client import ApiClient, ApiError, is_status, request
from breakwater.k8s.kubeconfig import Configuration
from tests.unit.k8s.apiserver import ApiServer, api_server


@pytest.fixture
def server() -> Iterator[ApiServer]:
    with api_server() as running:
        yield running


@pytest.fixture
def api(server: ApiServer) -> ApiClient:
    assert server.ca is not None
    return ApiClient(Configuration(host=server.url, ca_data=server.ca.cert_pem, token="tok"))


def test_an_answer_is_decoded_and_an_error_raises_api_error_with_status_reason_and_body(
    server: ApiServer, api: ApiClient
) -> None:
    server.answers[("GET", "/api/v1/namespaces/a/pods/p")] = (200, {"metadata": {"labels": {"x": "1"}}})
    assert pods.labels(api, namespace="a", name="p") == {"x": "1"}
    assert pods.labels(api, namespace="a", name="gone") is None  # 404
    seen = server.seen[0]
    assert (seen.method, seen.headers["Authorization"]) == ("GET", "Bearer tok")
    with pytest.raises(ApiError) as raised:
        request(api, "GET", "/api/v1/namespaces/a/pods/gone", params={"x": "a b"})
    assert server.seen[-1].path == "/api/v1/namespaces/a/pods/gone?x=a+b"
    error = raised.value
    assert (error.status, error.reason) == (404, "Not Found")
    assert '"code": 404' in error.body
    assert isinstance(error, KubernetesError)
    assert is_status(error, 404)
    assert not is_status(error, 409)
    server.answers[("POST", "/api/v1/namespaces/a/configmaps")] = (409, {"kind": "Status", "code": 409})
    with pytest.raises(ApiError) as conflict:
        request(api, "POST", "/api/v1/namespaces/a/configmaps", {"metadata": {"name": "x"}})
    assert (conflict.value.status, conflict.value.reason) == (409, "Conflict")


def test_a_config_key_is_merge_patched_and_the_configmap_created_when_missing(
    server: ApiServer, api: ApiClient
) -> None:
    cm = "/api/v1/namespaces/a/configmaps/cfg"
    server.answers[("POST", "/api/v1/namespaces/a/configmaps")] = (201, {})
    assert configmaps.put_key(api, namespace="a", name="cfg", key="k", value="v")
    first, second = server.seen
    assert (first.method, first.path, first.headers["Content-Type"]) == (
        "PATCH",
        cm,
        "application/merge-patch+json",
    )
    assert first.body["data"] == {"k": "v"}
    assert second.method == "POST"
    assert (second.body["metadata"]["name"], second.body["data"]) == ("cfg", {"k": "v"})
    server.answers[("GET", cm)] = (200, {"data": {"k": "v"}})
    assert configmaps.read(api, namespace="a", name="cfg") == {"k": "v"}


def test_a_create_in_a_terminating_namespace_is_not_an_error(server: ApiServer, api: ApiClient) -> None:
    refused = {"kind": "Status", "code": 403, "details": {"causes": [{"reason": "NamespaceTerminating"}]}}
    server.answers[("POST", "/api/v1/namespaces/a/configmaps")] = (403, refused)
    assert not configmaps.put_key(api, namespace="a", name="cfg", key="k", value="v")


def test_a_token_review_names_the_pod_its_token_is_bound_to(server: ApiServer, api: ApiClient) -> None:
    status = {
        "authenticated": True,
        "audiences": ["breakwater"],
        "user": {
            "username": "system:serviceaccount:shop:default",
            "extra": {tokenreview.POD_NAME_EXTRA: ["web-1"], tokenreview.POD_UID_EXTRA: ["u-1"]},
        },
    }
    server.answers[("POST", "/apis/authentication.k8s.io/v1/tokenreviews")] = (201, {"status": status})
    who = tokenreview.review(api, "t0ken", audience="breakwater")
    assert who == tokenreview.PodIdentity("shop", "web-1", "u-1", "default")
    assert server.seen[0].body["spec"] == {"token": "t0ken", "audiences": ["breakwater"]}


def test_the_ca_bundle_is_json_patched_only_where_it_differs(server: ApiServer, api: ApiClient) -> None:
    ca = b"-----BEGIN CERTIFICATE-----\nX\n-----END CERTIFICATE-----\n"
    wanted = base64.b64encode(ca).decode()
    current = {"webhooks": [{"clientConfig": {"caBundle": wanted}}, {"clientConfig": {}}]}
    path = f"{webhooks.CONFIGURATIONS}/bw"
    server.answers.update({("GET", path): (200, current), ("PATCH", path): (200, {})})
    assert not webhooks.carries_ca(api, name="bw", ca_pem=ca)
    assert webhooks.patch_ca_bundle(api, name="bw", ca_pem=ca)
    last = server.seen[-1]
    assert (last.method, last.headers["Content-Type"]) == ("PATCH", "application/json-patch+json")
    assert last.body == [{"op": "add", "path": "/webhooks/1/clientConfig/caBundle", "value": wanted}]


def test_connections_are_kept_alive_across_threads_and_a_closed_one_is_replaced(
    server: ApiServer, api: ApiClient
) -> None:
    server.answers[("GET", "/api/v1/namespaces/a/pods/p")] = (200, {})
    with ThreadPoolExecutor(max_workers=4) as pool:
        list(pool.map(lambda _: request(api, "GET", "/api/v1/namespaces/a/pods/p"), range(200)))
    assert len(server.seen) == 200
    assert len({s.connection for s in server.seen}) <= 8  # reused, not one per call
    server.close_after_answer = True  # the server drops each connection once it answered
    for _ in range(3):
        assert request(api, "GET", "/api/v1/namespaces/a/pods/p") == {}
    assert len({s.connection for s in server.seen[-3:]}) == 3


def test_the_operator_and_the_sidecar_run_without_the_kubernetes_package() -> None:
    """As in the image, where it is not installed: importing it fails, and nothing needs it (kopf
    tries it at import, for its optional model support, and carries on)."""
    script = textwrap.dedent(
        """
        import sys
        class NoKubernetes:
            def find_spec(self, name, path=None, target=None):
                if name == "kubernetes" or name.startswith("kubernetes."):
                    raise ModuleNotFoundError(f"No module named {name!r}")
        sys.meta_path.insert(0, NoKubernetes())
        import breakwater.cli, breakwater.controller.main, breakwater.controller.replica
        import breakwater.proxy.main
        from breakwater.k8s.kubeconfig import Configuration
        from breakwater.k8s.aio import AsyncApi
        from breakwater.k8s.client import ApiClient
        AsyncApi(ApiClient(Configuration(host="https://127.0.0.1:6443", token="t")))
        print(sorted(m for m in sys.modules if m.split(".")[0] in ("kubernetes", "urllib3")))
        """
    )
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


async def test_the_asyncio_client_uses_the_same_configuration_and_raises_the_same_error(
    server: ApiServer, api: ApiClient
) -> None:
    from breakwater.api.constants import GROUP, PLURAL, VERSION
    from breakwater.k8s.aio import AsyncApi

    policies = f"/apis/{GROUP}/{VERSION}/namespaces/a/{PLURAL}"
    server.answers[("GET", policies)] = (200, {"items": [{"metadata": {"name": "p"}}]})
    server.answers[("PATCH", f"{policies}/p/status")] = (422, {"kind": "Status", "code": 422})
    writer = AsyncApi(api)
    try:
        assert await writer.list_policies("a") == [{"metadata": {"name": "p"}}]
        assert server.seen[-1].headers["Authorization"] == "Bearer tok"
        assert await writer.get_policy("a", "gone") is None  # 404
        with pytest.raises(ApiError) as raised:
            await writer.patch_policy_status("a", "p", {"x": 1})
        assert (raised.value.status, raised.value.reason) == (422, "Unprocessable Entity")
        assert server.seen[-1].headers["Content-Type"] == "application/merge-patch+json"
    finally:
        await writer.close()
