"""The MutatingWebhookConfiguration: values in, webhook out."""

from __future__ import annotations

from pathlib import Path

from breakwater.controller import webhook as operator_webhook
from tests.chart import WEBHOOK_NAME, ChartNames, render, settings_of

NS = "breakwater-system"
EXCLUDE_EXPRESSION_KEY = "kubernetes.io/metadata.name"
SYSTEM = ["kube-system", "kube-public", "kube-node-lease"]


def _exclusions(selector: dict[str, object]) -> list[str]:
    expressions = selector.get("matchExpressions", [])
    assert isinstance(expressions, list)
    found = [e for e in expressions if e["key"] == EXCLUDE_EXPRESSION_KEY and e["operator"] == "NotIn"]
    assert len(found) == 1, expressions
    values: list[str] = found[0]["values"]
    return values


def test_by_default_one_webhook_sends_pod_creations_in_opted_in_namespaces_to_the_service(
    helm: Path, chart: Path
) -> None:
    rendered = render(helm, chart, release="bw", namespace=NS)
    names = ChartNames("bw", NS)
    mwc = rendered.one("MutatingWebhookConfiguration", names.webhook_configuration)
    webhook = rendered.webhook
    assert webhook["name"] == WEBHOOK_NAME
    assert webhook["clientConfig"] == {
        "service": {"name": names.service, "namespace": NS, "path": "/inject-sidecar", "port": 443}
    }
    assert "caBundle" not in webhook["clientConfig"], "the operator (or cert-manager) owns caBundle"
    assert webhook["rules"] == [
        {
            "operations": ["CREATE"],
            "apiGroups": [""],
            "apiVersions": ["v1"],
            "resources": ["pods"],
            "scope": "Namespaced",
        }
    ]
    assert webhook["namespaceSelector"]["matchLabels"] == {"breakwater.dev/injection": "enabled"}
    assert _exclusions(webhook["namespaceSelector"]) == [*SYSTEM, NS]
    assert "objectSelector" not in webhook
    assert webhook["failurePolicy"] == "Ignore"
    assert webhook["timeoutSeconds"] == 5
    assert webhook["sideEffects"] == "None"
    assert webhook["admissionReviewVersions"] == ["v1"]
    assert webhook["reinvocationPolicy"] == "Never"
    assert webhook["matchPolicy"] == "Equivalent"
    assert "cert-manager.io/inject-ca-from" not in (mwc["metadata"].get("annotations") or {})


def test_the_webhook_points_at_a_service_port_that_reaches_the_webhook_container_port(
    helm: Path, chart: Path
) -> None:
    rendered = render(helm, chart, values={"ports": {"webhook": 10443}})
    client = rendered.webhook["clientConfig"]["service"]
    service = rendered.one("Service", client["name"])
    assert service["metadata"]["namespace"] == client["namespace"]
    port = next(p for p in service["spec"]["ports"] if p["port"] == client["port"])
    container_port = next(p for p in rendered.container["ports"] if p["name"] == port["targetPort"])
    assert container_port["containerPort"] == 10443
    assert "--webhook-listen=0.0.0.0:10443" in rendered.operator_args


def test_inject_all_namespaces_selects_every_namespace_but_the_system_and_release_ones(
    helm: Path, chart: Path
) -> None:
    rendered = render(
        helm,
        chart,
        namespace="bw-ops",
        values={"webhook": {"injectAllNamespaces": True, "excludeNamespaces": ["monitoring", "kube-system"]}},
    )
    selector = rendered.webhook["namespaceSelector"]
    assert set(selector) == {"matchExpressions"}, "no opt-in label required"
    assert _exclusions(selector) == [*SYSTEM, "bw-ops", "monitoring"]
    assert "--inject-all-namespaces" in rendered.operator_args


def test_a_custom_namespace_selector_keeps_its_expressions_and_gains_the_exclusions(
    helm: Path, chart: Path
) -> None:
    custom = {"matchExpressions": [{"key": "env", "operator": "In", "values": ["prod"]}]}
    rendered = render(
        helm,
        chart,
        values={
            "webhook": {"namespaceSelector": custom, "objectSelector": {"matchLabels": {"inject": "yes"}}}
        },
    )
    selector = rendered.webhook["namespaceSelector"]
    assert selector["matchExpressions"][0] == custom["matchExpressions"][0]
    assert _exclusions(selector) == [*SYSTEM, NS]
    assert rendered.webhook["objectSelector"] == {"matchLabels": {"inject": "yes"}}


def test_failure_policy_and_timeout_come_from_values_and_reach_the_operator_too(
    helm: Path, chart: Path
) -> None:
    rendered = render(helm, chart, values={"webhook": {"failurePolicy": "Fail", "timeoutSeconds": 12}})
    assert rendered.webhook["failurePolicy"] == "Fail"
    assert rendered.webhook["timeoutSeconds"] == 12
    assert "--webhook-failure-policy=Fail" in rendered.operator_args
    assert "--webhook-timeout-seconds=12" in rendered.operator_args


def test_cluster_scoped_objects_are_named_from_the_release_so_two_releases_never_collide(
    helm: Path, chart: Path
) -> None:
    def cluster_scoped(release: str, namespace: str) -> set[str]:
        rendered = render(
            helm, chart, release=release, namespace=namespace, values={"crds": {"install": False}}
        )
        return {
            f"{o['kind']}/{o['metadata']['name']}"
            for o in rendered
            if o["kind"] in {"ClusterRole", "ClusterRoleBinding", "MutatingWebhookConfiguration"}
        }

    first, second = cluster_scoped("team-a", "a"), cluster_scoped("team-b", "b")
    assert (
        len(first) == len(second) == 5
    )  # the operator's role and binding, the two aggregated roles, the webhook
    assert not first & second
    assert "MutatingWebhookConfiguration/team-a-breakwater" in first


def test_a_release_named_after_the_chart_is_not_doubled(helm: Path, chart: Path) -> None:
    rendered = render(helm, chart, release="breakwater")
    assert rendered.one("MutatingWebhookConfiguration")["metadata"]["name"] == "breakwater"
    assert ChartNames("breakwater", NS).fullname == "breakwater"


def test_the_chart_selects_the_same_namespaces_as_the_operator_would_for_itself(
    helm: Path, chart: Path
) -> None:
    """`--webhook-manage=full` (local runs) makes the operator write its own selector: the chart's
    must admit and exclude the same namespaces."""
    for values in (
        {},
        {"webhook": {"injectAllNamespaces": True}},
        {"operator": {"watchNamespaces": ["shop", "billing"]}},
    ):
        rendered = render(helm, chart, values=values)
        settings = settings_of(rendered)
        ours = operator_webhook.namespace_selector(settings)
        chart_selector = rendered.webhook["namespaceSelector"]
        assert chart_selector.get("matchLabels") == ours.get("matchLabels"), values
        as_sets = [
            (e["key"], e["operator"], frozenset(e["values"])) for e in chart_selector["matchExpressions"]
        ]
        assert sorted(as_sets, key=str) == sorted(
            [(e["key"], e["operator"], frozenset(e["values"])) for e in ours["matchExpressions"]], key=str
        ), values
