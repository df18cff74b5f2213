from __future__ import annotations

import copy
from typing import Any

from breakwater.api import constants
from breakwater.injection import pod as injection

TEMPLATE = injection.SidecarTemplate(
    image="registry.example/breakwater:1", resources={"requests": {"cpu": "10m"}}
)
PLAN = injection.InjectionPlan(
    policies=("shop/payments",),
    listen_ports=(("payments-api", 15210),),
    transparent=True,
    config_hash="abc123",
)


def app_pod(**annotations: str) -> dict[str, Any]:
    return {
        "metadata": {
            "generateName": "checkout-",
            "labels": {"app": "checkout"},
            "annotations": dict(annotations),
        },
        "spec": {
            "containers": [{"name": "app", "image": "app:1", "env": [{"name": "NO_PROXY", "value": "mine"}]}]
        },
    }


def test_the_sidecar_is_a_native_sidecar_the_app_waits_for() -> None:
    pod = app_pod()
    pod["spec"]["initContainers"] = [{"name": "migrate", "image": "app:1"}]
    injection.inject(pod, template=TEMPLATE, plan=PLAN)
    sidecar, migrate = pod["spec"]["initContainers"]
    assert sidecar["name"] == constants.SIDECAR_NAME
    assert migrate["name"] == "migrate", "first: later init containers may call through the proxy"
    assert [c["name"] for c in pod["spec"]["containers"]] == ["app"]
    # restartPolicy Always makes an init container a sidecar: it keeps running beside the app, and
    # the app starts only once its startup probe (listeners bound, config loaded) has passed.
    assert sidecar["restartPolicy"] == "Always"
    assert sidecar["startupProbe"]["httpGet"] == {"path": "/readyz", "port": "bw-admin"}
    assert sidecar["startupProbe"]["periodSeconds"] == 1
    assert injection.sidecar_of(pod) == sidecar


def test_the_sidecar_has_a_restricted_security_context() -> None:
    pod = app_pod()
    injection.inject(pod, template=TEMPLATE, plan=PLAN)
    sidecar = pod["spec"]["initContainers"][0]
    assert sidecar["name"] == constants.SIDECAR_NAME
    assert sidecar["securityContext"] == {
        "runAsNonRoot": True,
        "runAsUser": 65532,
        "readOnlyRootFilesystem": True,
        "allowPrivilegeEscalation": False,
        "capabilities": {"drop": ["ALL"]},
        "seccompProfile": {"type": "RuntimeDefault"},
    }
    assert sidecar["readinessProbe"]["httpGet"] == {"path": "/readyz", "port": "bw-admin"}
    assert {p["containerPort"] for p in sidecar["ports"]} == {15200, 15201, 15210}


def test_app_containers_get_upstream_urls_and_proxy_env_without_losing_their_own() -> None:
    pod = app_pod()
    injection.inject(pod, template=TEMPLATE, plan=PLAN)
    env = {e["name"]: e["value"] for e in pod["spec"]["containers"][0]["env"]}
    assert env["BREAKWATER_PAYMENTS_API_URL"] == "http://127.0.0.1:15210"
    assert env["HTTP_PROXY"] == "http://127.0.0.1:15201"
    assert env["NO_PROXY"] == "mine"  # the app's own value wins


def test_annotations_record_the_policies_and_the_config_hash() -> None:
    pod = app_pod()
    injection.inject(pod, template=TEMPLATE, plan=PLAN)
    annotations = pod["metadata"]["annotations"]
    assert annotations[constants.ANNOTATION_INJECTED] == "true"
    assert annotations[constants.ANNOTATION_POLICIES] == "shop/payments"
    assert annotations[constants.ANNOTATION_CONFIG_HASH] == "abc123"


def test_an_injected_pod_is_never_injected_again() -> None:
    pod = app_pod()
    injection.inject(pod, template=TEMPLATE, plan=PLAN)
    assert (
        injection.skip_reason(copy.deepcopy(pod), "shop", operator_namespace="breakwater-system")
        == "already injected"
    )


def test_opted_out_pods_and_system_namespaces_are_skipped() -> None:
    assert "opted out" in str(
        injection.skip_reason(app_pod(**{"breakwater.dev/inject": "false"}), "shop", operator_namespace="x")
    )
    assert injection.skip_reason(app_pod(), "kube-system", operator_namespace="x")
    assert injection.skip_reason(app_pod(), "breakwater-system", operator_namespace="breakwater-system")
    assert injection.skip_reason(app_pod(), "shop", operator_namespace="breakwater-system") is None
