"""The operator's synchronous API calls (`k8s.client.request`): what each sends, how answers and errors
come back, and that none of them loads the kubernetes client's typed API classes (about 23 MiB of
model modules, `client.CoreV1Api` alone: the memory target at 10,000 pods needs them left out)."""

from __future__ import annotations

import base64
import json
import subprocess
import sys
import textwrap
from typing import Any

import pytest
from kubernetes import client

from breakwater.k8s import configmaps, pods, tokenreview, webhooks
from breakwater.k8s.client import request


class _Answer:
    def __init__(self, status: int, body: Any) -> None:
        self.status, self.reason = status, "OK" if status < 300 else "Error"
        self.data = json.dumps(body).encode() if body is not None else b""
        self.headers: dict[str, str] = {}

    def read(self) -> bytes:
        return self.data


class FakeRest:
    """Answers by (method, path); records every call."""

    def __init__(self, answers: dict[tuple[str, str], tuple[int, Any]]) -> None:
        self.answers = answers
        self.calls: list[tuple[str, str, dict[str, str], Any]] = []

    def request(self, method: str, url: str, headers: dict[str, str], body: Any = None) -> _Answer:
        path = url.removeprefix("https://api.test")
        self.calls.append((method, path, headers, body))
        return _Answer(*self.answers.get((method, path), (404, {"kind": "Status", "code": 404})))


def api_with(answers: dict[tuple[str, str], tuple[int, Any]]) -> tuple[client.ApiClient, FakeRest]:
    configuration = client.Configuration()
    configuration.host = "https://api.test"
    configuration.api_key = {"BearerToken": "tok"}
    configuration.api_key_prefix = {"BearerToken": "Bearer"}
    api = client.ApiClient(configuration)
    fake = FakeRest(answers)
    api.rest_client = fake  # type: ignore[assignment]
    return api, fake


def test_an_answer_is_decoded_and_an_error_raises_the_clients_exception_with_status_and_body() -> None:
    api, fake = api_with(
        {("GET", "/api/v1/namespaces/a/pods/p"): (200, {"metadata": {"labels": {"x": "1"}}})}
    )
    assert pods.labels(api, namespace="a", name="p") == {"x": "1"}
    assert pods.labels(api, namespace="a", name="gone") is None  # 404
    method, _, headers, _ = fake.calls[0]
    assert method == "GET"
    assert headers["authorization"] == "Bearer tok"
    with pytest.raises(client.ApiException) as raised:
        request(api, "GET", "/api/v1/namespaces/a/pods/gone")
    assert raised.value.status == 404
    assert '"code": 404' in str(raised.value.body)


def test_a_config_key_is_merge_patched_and_the_configmap_created_when_missing() -> None:
    cm = "/api/v1/namespaces/a/configmaps/cfg"
    api, fake = api_with({("POST", "/api/v1/namespaces/a/configmaps"): (201, {})})
    assert configmaps.put_key(api, namespace="a", name="cfg", key="k", value="v")
    (m1, p1, h1, b1), (m2, _, _, b2) = fake.calls
    assert (m1, p1, h1["Content-Type"]) == ("PATCH", cm, "application/merge-patch+json")
    assert b1["data"] == {"k": "v"}
    assert m2 == "POST"
    assert (b2["metadata"]["name"], b2["data"]) == ("cfg", {"k": "v"})
    api, fake = api_with({("GET", cm): (200, {"data": {"k": "v"}})})
    assert configmaps.read(api, namespace="a", name="cfg") == {"k": "v"}


def test_a_token_review_names_the_pod_its_token_is_bound_to() -> None:
    status = {
        "authenticated": True,
        "audiences": ["breakwater"],
        "user": {
            "username": "system:serviceaccount:shop:default",
            "extra": {tokenreview.POD_NAME_EXTRA: ["web-1"], tokenreview.POD_UID_EXTRA: ["u-1"]},
        },
    }
    api, fake = api_with({("POST", "/apis/authentication.k8s.io/v1/tokenreviews"): (201, {"status": status})})
    who = tokenreview.review(api, "t0ken", audience="breakwater")
    assert who == tokenreview.PodIdentity("shop", "web-1", "u-1", "default")
    assert fake.calls[0][3]["spec"] == {"token": "t0ken", "audiences": ["breakwater"]}


def test_the_ca_bundle_is_json_patched_only_where_it_differs() -> None:
    ca = b"-----BEGIN CERTIFICATE-----\nX\n-----END CERTIFICATE-----\n"
    wanted = base64.b64encode(ca).decode()
    current = {"webhooks": [{"clientConfig": {"caBundle": wanted}}, {"clientConfig": {}}]}
    path = f"{webhooks.CONFIGURATIONS}/bw"
    api, fake = api_with({("GET", path): (200, current), ("PATCH", path): (200, {})})
    assert not webhooks.carries_ca(api, name="bw", ca_pem=ca)
    assert webhooks.patch_ca_bundle(api, name="bw", ca_pem=ca)
    method, _, headers, ops = fake.calls[-1]
    assert (method, headers["Content-Type"]) == ("PATCH", "application/json-patch+json")
    assert ops == [{"op": "add", "path": "/webhooks/1/clientConfig/caBundle", "value": wanted}]


def test_no_typed_api_class_is_loaded() -> None:
    script = textwrap.dedent(
        f"""
        import sys
        sys.path.insert(0, {str(__import__("pathlib").Path(__file__).parent)!r})
        import test_requests as t
        for name in dir(t):
            if name.startswith("test_") and name != "test_no_typed_api_class_is_loaded":
                getattr(t, name)()
        import breakwater.controller.replica
        loaded = sorted(m for m in sys.modules if m.startswith("kubernetes.client.api."))
        print(loaded)
        """
    )
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"
