"""RBAC is least privilege: only what the operator uses, Secrets only by name in its own namespace."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from breakwater.api.constants import CONFIGMAP_NAME, HISTORY_CONFIGMAP_NAME
from tests.chart import ChartNames, render

NS = "breakwater-system"


def _rules(obj: dict[str, Any]) -> list[dict[str, Any]]:
    rules: list[dict[str, Any]] = obj["rules"]
    return rules


def _grants(rules: list[dict[str, Any]]) -> set[tuple[str, str, str, tuple[str, ...]]]:
    return {
        (group, resource, verb, tuple(rule.get("resourceNames", ())))
        for rule in rules
        for group in rule["apiGroups"]
        for resource in rule["resources"]
        for verb in rule["verbs"]
    }


def _expected_cluster_grants(webhook_configuration: str) -> set[tuple[str, str, str, tuple[str, ...]]]:
    """The default values' ClusterRole; tests/cluster/test_chart_rbac_audit.py proves from the API
    server's audit log that the operator uses every one of these over its flow."""
    return {
        *{("breakwater.dev", "circuitbreakerpolicies", v, ()) for v in ("get", "list", "watch", "patch")},
        ("breakwater.dev", "circuitbreakerpolicies/status", "patch", ()),
        *{("", "pods", v, ()) for v in ("get", "list", "watch")},
        *{("", "configmaps", v, (CONFIGMAP_NAME,)) for v in ("get", "list", "watch", "patch")},
        *{("", "configmaps", v, (HISTORY_CONFIGMAP_NAME,)) for v in ("get", "patch")},
        ("", "configmaps", "create", ()),
        ("", "events", "create", ()),
        *{("apiextensions.k8s.io", "customresourcedefinitions", v, ()) for v in ("list", "watch")},
        *{
            ("admissionregistration.k8s.io", "mutatingwebhookconfigurations", v, (webhook_configuration,))
            for v in ("get", "patch")
        },
        ("authentication.k8s.io", "tokenreviews", "create", ()),
    }


def test_the_cluster_role_grants_exactly_what_the_operator_uses(helm: Path, chart: Path) -> None:
    rendered = render(helm, chart, release="bw", namespace=NS)
    names = ChartNames("bw", NS)
    rules = _rules(rendered.one("ClusterRole", names.cluster_role))
    assert _grants(rules) == _expected_cluster_grants(names.webhook_configuration)


def test_configmaps_are_reached_only_by_the_operator_s_names_but_for_create(helm: Path, chart: Path) -> None:
    rules = _rules(render(helm, chart).one("ClusterRole", ChartNames("bw", NS).cluster_role))
    configmaps = [r for r in rules if "configmaps" in r["resources"]]
    assert configmaps == [
        {
            "apiGroups": [""],
            "resources": ["configmaps"],
            "resourceNames": [CONFIGMAP_NAME],
            "verbs": ["get", "list", "watch", "patch"],
        },
        {
            "apiGroups": [""],
            "resources": ["configmaps"],
            "resourceNames": [HISTORY_CONFIGMAP_NAME],
            "verbs": ["get", "patch"],
        },
        {"apiGroups": [""], "resources": ["configmaps"], "verbs": ["create"]},
    ]


def test_watch_namespaces_adds_only_kopf_s_namespace_observer(helm: Path, chart: Path) -> None:
    names = ChartNames("bw", NS)
    plain = _grants(_rules(render(helm, chart).one("ClusterRole", names.cluster_role)))
    watching = render(helm, chart, values={"operator": {"watchNamespaces": ["shop"]}})
    added = _grants(_rules(watching.one("ClusterRole", names.cluster_role))) - plain
    assert added == {("", "namespaces", "list", ()), ("", "namespaces", "watch", ())}


def test_nothing_is_granted_by_wildcard(helm: Path, chart: Path) -> None:
    rendered = render(helm, chart)
    for role in rendered.all("ClusterRole") + rendered.all("Role"):
        for rule in _rules(role):
            for key in ("apiGroups", "resources", "verbs", "resourceNames"):
                assert "*" not in rule.get(key, []), (role["kind"], rule)


def test_the_cluster_role_reads_no_secrets(helm: Path, chart: Path) -> None:
    for values in ({}, {"webhook": {"certManager": {"enabled": True}}}):
        rendered = render(helm, chart, values=values, api_versions=["cert-manager.io/v1"])
        for role in rendered.all("ClusterRole"):
            assert not [r for r in _rules(role) if "secrets" in r["resources"]], role


def test_the_webhook_configuration_is_patched_only_by_name(helm: Path, chart: Path) -> None:
    rendered = render(helm, chart, release="bw", namespace=NS)
    names = ChartNames("bw", NS)
    rule = next(
        r
        for r in _rules(rendered.one("ClusterRole", names.cluster_role))
        if "mutatingwebhookconfigurations" in r["resources"]
    )
    assert rule["resourceNames"] == [names.webhook_configuration]
    assert rendered.one("MutatingWebhookConfiguration")["metadata"]["name"] == names.webhook_configuration


LEASE_RULES = [
    {"apiGroups": ["coordination.k8s.io"], "resources": ["leases"], "verbs": ["create"]},
    {
        "apiGroups": ["coordination.k8s.io"],
        "resources": ["leases"],
        "resourceNames": ["bw-breakwater-leader"],
        "verbs": ["get", "update"],
    },
]


def test_the_webhook_secret_and_the_lease_are_reachable_only_in_the_release_namespace_and_by_name(
    helm: Path, chart: Path
) -> None:
    rendered = render(helm, chart, release="bw", namespace=NS)
    names = ChartNames("bw", NS)
    role = rendered.one("Role", names.fullname)
    assert role["metadata"]["namespace"] == NS
    assert _rules(role) == [
        *LEASE_RULES,
        {"apiGroups": [""], "resources": ["secrets"], "verbs": ["create"]},
        {
            "apiGroups": [""],
            "resources": ["secrets"],
            "resourceNames": [names.webhook_secret],
            "verbs": ["get", "update"],
        },
    ]
    assert f"--webhook-secret={NS}/{names.webhook_secret}" in rendered.operator_args
    assert LEASE_RULES[1]["resourceNames"] == [f"{names.webhook_configuration}-leader"]  # lease_name()


def test_bindings_bind_the_operator_service_account(helm: Path, chart: Path) -> None:
    rendered = render(helm, chart, release="bw", namespace=NS)
    names = ChartNames("bw", NS)
    subject = {"kind": "ServiceAccount", "name": names.service_account, "namespace": NS}
    crb = rendered.one("ClusterRoleBinding", names.fullname)
    assert crb["subjects"] == [subject]
    assert crb["roleRef"] == {
        "apiGroup": "rbac.authorization.k8s.io",
        "kind": "ClusterRole",
        "name": names.cluster_role,
    }
    rb = rendered.one("RoleBinding", names.fullname)
    assert rb["subjects"] == [subject]
    assert rb["roleRef"]["kind"] == "Role"
    assert rendered.pod_spec["serviceAccountName"] == names.service_account
    assert rendered.one("ServiceAccount", names.service_account)["automountServiceAccountToken"] is False
    assert rendered.pod_spec["automountServiceAccountToken"] is True, "only the operator pod gets a token"


def test_with_cert_manager_the_operator_touches_no_secret_and_not_its_webhook(
    helm: Path, chart: Path
) -> None:
    rendered = render(
        helm,
        chart,
        release="bw",
        namespace=NS,
        values={"webhook": {"certManager": {"enabled": True}}},
        api_versions=["cert-manager.io/v1"],
    )
    assert _rules(rendered.one("Role")) == LEASE_RULES  # the Lease only
    names = ChartNames("bw", NS)
    grants = _grants(_rules(rendered.one("ClusterRole", names.cluster_role)))
    assert not [g for g in grants if g[1] == "mutatingwebhookconfigurations"]  # cainjector's job
    # Nothing beyond the default mode's, whose every grant the audit-log test sees used.
    assert grants < _expected_cluster_grants(names.webhook_configuration)


def test_rbac_and_service_account_can_be_brought_by_the_user(helm: Path, chart: Path) -> None:
    rendered = render(
        helm,
        chart,
        values={
            "rbac": {"create": False, "aggregateToDefaultRoles": False},
            "serviceAccount": {"create": False, "name": "platform-bw"},
        },
    )
    assert not rendered.kinds() & {
        "ClusterRole",
        "ClusterRoleBinding",
        "Role",
        "RoleBinding",
        "ServiceAccount",
    }
    assert rendered.pod_spec["serviceAccountName"] == "platform-bw"


def test_policies_are_aggregated_into_the_built_in_view_edit_and_admin_roles(helm: Path, chart: Path) -> None:
    rendered = render(helm, chart, release="bw", namespace=NS)
    prefix = "rbac.authorization.k8s.io/aggregate-to-"
    view, edit = (
        rendered.one("ClusterRole", "bw-breakwater-view"),
        rendered.one("ClusterRole", "bw-breakwater-edit"),
    )
    assert {
        k.removeprefix(prefix)
        for k, v in view["metadata"]["labels"].items()
        if k.startswith(prefix) and v == "true"
    } == {"view", "edit", "admin"}
    assert {
        k.removeprefix(prefix)
        for k, v in edit["metadata"]["labels"].items()
        if k.startswith(prefix) and v == "true"
    } == {"edit", "admin"}
    assert _grants(_rules(view)) == {
        ("breakwater.dev", "circuitbreakerpolicies", v, ()) for v in ("get", "list", "watch")
    }
    assert _grants(_rules(edit)) == {
        ("breakwater.dev", "circuitbreakerpolicies", v, ())
        for v in ("create", "update", "patch", "delete", "deletecollection")
    }
    assert not rendered.all("ClusterRoleBinding")[1:], (
        "aggregated roles are bound by the cluster's own bindings"
    )
    off = render(helm, chart, values={"rbac": {"aggregateToDefaultRoles": False}})
    assert {r["metadata"]["name"] for r in off.all("ClusterRole")} == {"bw-breakwater"}
