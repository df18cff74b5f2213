"""RBAC is least privilege: only what the operator uses, Secrets only by name in its own namespace."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from tests.chart import ChartNames, render

NS = "breakwater-system"


def _rules(obj: dict[str, Any]) -> list[dict[str, Any]]:
    rules: list[dict[str, Any]] = obj["rules"]
    return rules


def _grants(rules: list[dict[str, Any]]) -> set[tuple[str, str, str]]:
    return {
        (group, resource, verb)
        for rule in rules
        for group in rule["apiGroups"]
        for resource in rule["resources"]
        for verb in rule["verbs"]
    }


EXPECTED_CLUSTER_GRANTS = {
    *{("breakwater.dev", "circuitbreakerpolicies", v) for v in ("get", "list", "watch", "patch", "update")},
    *{("breakwater.dev", "circuitbreakerpolicies/status", v) for v in ("get", "patch", "update")},
    *{("", "pods", v) for v in ("get", "list", "watch")},
    *{("", "configmaps", v) for v in ("get", "list", "watch", "create", "patch", "update", "delete")},
    *{("", "events", v) for v in ("create", "patch")},
    *{("events.k8s.io", "events", v) for v in ("create", "patch")},
    *{("apiextensions.k8s.io", "customresourcedefinitions", v) for v in ("get", "list", "watch")},
    *{("", "namespaces", v) for v in ("get", "list", "watch")},
    *{
        ("admissionregistration.k8s.io", "mutatingwebhookconfigurations", v)
        for v in ("get", "patch", "update")
    },
    ("authentication.k8s.io", "tokenreviews", "create"),
}


def test_the_cluster_role_grants_exactly_what_the_operator_uses(helm: Path, chart: Path) -> None:
    rendered = render(helm, chart, release="bw", namespace=NS)
    names = ChartNames("bw", NS)
    rules = _rules(rendered.one("ClusterRole", names.cluster_role))
    assert _grants(rules) == EXPECTED_CLUSTER_GRANTS


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
        r for r in _rules(rendered.one("ClusterRole")) if "mutatingwebhookconfigurations" in r["resources"]
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
            "verbs": ["get", "update", "patch"],
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


def test_with_cert_manager_the_operator_touches_no_secret_and_only_reads_its_webhook(
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
    rule = next(
        r for r in _rules(rendered.one("ClusterRole")) if "mutatingwebhookconfigurations" in r["resources"]
    )
    assert rule["verbs"] == ["get"]


def test_rbac_and_service_account_can_be_brought_by_the_user(helm: Path, chart: Path) -> None:
    rendered = render(
        helm,
        chart,
        values={"rbac": {"create": False}, "serviceAccount": {"create": False, "name": "platform-bw"}},
    )
    assert not rendered.kinds() & {
        "ClusterRole",
        "ClusterRoleBinding",
        "Role",
        "RoleBinding",
        "ServiceAccount",
    }
    assert rendered.pod_spec["serviceAccountName"] == "platform-bw"
