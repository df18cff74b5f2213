"""Where the API server calls the operator, and for which namespaces (`--webhook-manage=full`)."""

from __future__ import annotations

from breakwater.controller import webhook
from breakwater.controller.settings import OperatorSettings
from breakwater.k8s.webhooks import desired_configuration


def test_a_service_endpoint_serves_each_handler_at_its_own_path_with_the_service_names_as_sans() -> None:
    where = webhook.endpoint(OperatorSettings(webhook_service="breakwater-system/bw:443"))
    assert where.client_config("inject-sidecar") == {
        "service": {"namespace": "breakwater-system", "name": "bw", "port": 443, "path": "/inject-sidecar"}
    }
    assert "bw.breakwater-system.svc" in where.dns_names


def test_a_url_endpoint_keeps_its_prefix_and_an_ip_host_becomes_an_ip_san() -> None:
    where = webhook.endpoint(OperatorSettings(webhook_url="https://127.0.0.1:9443/hooks/"))
    assert where.client_config("expect-policy") == {"url": "https://127.0.0.1:9443/hooks/expect-policy"}
    assert (where.ips, where.dns_names) == (("127.0.0.1",), ())


def test_the_namespace_selector_excludes_the_system_and_the_operator_namespaces() -> None:
    selector = webhook.namespace_selector(OperatorSettings(operator_namespace="bw"))
    assert selector["matchLabels"] == {"breakwater.dev/injection": "enabled"}
    (excluded,) = selector["matchExpressions"]
    assert excluded["operator"] == "NotIn"
    assert set(excluded["values"]) == {"kube-system", "kube-public", "kube-node-lease", "bw"}
    everywhere = webhook.namespace_selector(
        OperatorSettings(inject_all_namespaces=True, watch_namespaces=("shop",))
    )
    assert "matchLabels" not in everywhere
    assert {"key": "kubernetes.io/metadata.name", "operator": "In", "values": ["shop"]} in everywhere[
        "matchExpressions"
    ]


def test_the_configuration_sends_pod_and_policy_creations_never_blocking_them() -> None:
    body = desired_configuration(
        name="breakwater",
        client_config=lambda handler: {"url": f"https://127.0.0.1:9443/{handler}"},
        namespace_selector={"matchLabels": {"breakwater.dev/injection": "enabled"}},
        failure_policy="Ignore",
        timeout_seconds=5,
    )
    pods, policies = body["webhooks"]
    assert pods["rules"][0]["resources"] == ["pods"]
    assert policies["rules"][0]["resources"] == ["circuitbreakerpolicies"]
    assert all(w["rules"][0]["operations"] == ["CREATE"] for w in body["webhooks"])
    assert all((w["failurePolicy"], w["sideEffects"]) == ("Ignore", "None") for w in body["webhooks"])


def test_a_fail_policy_blocks_pods_but_never_policies() -> None:
    """With --webhook-failure-policy=Fail an unreachable operator holds back pods (what the user asked
    for), never a policy CREATE: the policy webhook only notes names."""
    body = desired_configuration(
        name="breakwater",
        client_config=lambda handler: {"url": f"https://127.0.0.1:9443/{handler}"},
        namespace_selector={},
        failure_policy="Fail",
        timeout_seconds=5,
    )
    pods, policies = body["webhooks"]
    assert (pods["failurePolicy"], policies["failurePolicy"]) == ("Fail", "Ignore")
