"""The chart's RBAC on a real control plane: what the API server lets the operator's ServiceAccount do,
the certificate path under that identity, and what a namespace team bound to the built-in roles may do
with policies. (The whole flow under the ServiceAccount, checked against the audit log, is in
test_chart_rbac_audit.py.)
"""

from __future__ import annotations

import base64
import json
import time
from pathlib import Path

import pytest
from cryptography import x509

from tests.chart import ChartNames
from tests.cluster.chart_helpers import (
    get_object,
    install_chart,
    installed_operator_args,
    release_values,
    service_account_kubeconfig,
)
from tests.cluster.chart_operator import operator_process, with_local_listeners, written_ca_bundle
from tests.conftest import Cluster

pytestmark = pytest.mark.cluster


def _can(cluster: Cluster, names: ChartNames, *args: str) -> bool:
    subject = f"system:serviceaccount:{names.namespace}:{names.service_account}"
    proc = cluster.kubectl("auth", "can-i", *args, f"--as={subject}", check=False)
    answer = proc.stdout.strip()
    assert answer in {"yes", "no"}, proc.stderr
    return answer == "yes"


def test_the_service_account_may_do_what_the_operator_needs_and_nothing_more(
    cluster: Cluster, chart: Path, names: ChartNames
) -> None:
    install_chart(
        cluster,
        chart,
        release=names.release,
        namespace=names.namespace,
        values=release_values(cluster, names),
        wait=False,
    )
    ns = names.namespace
    allowed = [
        ("patch", f"mutatingwebhookconfigurations/{names.webhook_configuration}"),
        ("get", f"mutatingwebhookconfigurations/{names.webhook_configuration}"),
        ("create", "secrets", "-n", ns),
        ("get", f"secrets/{names.webhook_secret}", "-n", ns),
        ("update", f"secrets/{names.webhook_secret}", "-n", ns),
        ("list", "pods", "--all-namespaces"),
        ("watch", "circuitbreakerpolicies.breakwater.dev", "--all-namespaces"),
        ("patch", "circuitbreakerpolicies.breakwater.dev", "--subresource=status", "-n", "shop"),
        ("create", "configmaps", "-n", "shop"),
        # every replica lists and watches the sidecar ConfigMaps, by name (metadata.name fieldSelector)
        ("list", "configmaps/breakwater-sidecar-config", "--all-namespaces"),
        ("watch", "configmaps/breakwater-sidecar-config", "--all-namespaces"),
        ("create", "leases.coordination.k8s.io", "-n", ns),
        ("update", f"leases.coordination.k8s.io/{names.webhook_configuration}-leader", "-n", ns),
        ("get", f"leases.coordination.k8s.io/{names.webhook_configuration}-leader", "-n", ns),
        ("get", "configmaps/breakwater-sidecar-config", "-n", "shop"),
        ("patch", "configmaps/breakwater-sidecar-config", "-n", "shop"),
        ("create", "events", "-n", "shop"),
        ("create", "tokenreviews.authentication.k8s.io"),
        ("list", "customresourcedefinitions.apiextensions.k8s.io"),
    ]
    forbidden = [
        ("patch", "mutatingwebhookconfigurations/someone-elses-webhook"),
        ("list", "mutatingwebhookconfigurations"),
        ("get", "secrets/another-secret", "-n", ns),
        ("list", "secrets", "-n", ns),
        ("get", "secrets", "-n", "shop"),
        ("list", "secrets", "--all-namespaces"),
        ("delete", f"secrets/{names.webhook_secret}", "-n", ns),
        ("create", "pods", "-n", "shop"),
        ("patch", "pods", "-n", "shop"),
        ("delete", "circuitbreakerpolicies.breakwater.dev", "-n", "shop"),
        ("update", "leases.coordination.k8s.io/another-lease", "-n", ns),
        ("create", "leases.coordination.k8s.io", "-n", "shop"),
        ("list", "configmaps", "-n", "shop"),
        ("watch", "configmaps", "--all-namespaces"),
        ("get", "configmaps/someone-elses-config", "-n", "shop"),
        ("patch", "configmaps/kube-root-ca.crt", "-n", "shop"),
        ("update", "configmaps/breakwater-sidecar-config", "-n", "shop"),
        ("delete", "configmaps/breakwater-sidecar-config", "-n", "shop"),
        ("patch", f"secrets/{names.webhook_secret}", "-n", ns),
        ("update", f"mutatingwebhookconfigurations/{names.webhook_configuration}"),
        ("update", "circuitbreakerpolicies.breakwater.dev", "-n", "shop"),
        ("get", "circuitbreakerpolicies.breakwater.dev", "--subresource=status", "-n", "shop"),
        ("watch", "namespaces"),
        ("patch", "events", "-n", "shop"),
        ("create", "deployments.apps", "-n", ns),
        ("create", "customresourcedefinitions.apiextensions.k8s.io"),
        ("create", "clusterrolebindings.rbac.authorization.k8s.io"),
        ("impersonate", "serviceaccounts"),
    ]
    wrong = [" ".join(a) for a in allowed if not _can(cluster, names, *a)]
    wrong += [f"NOT {' '.join(a)}" for a in forbidden if _can(cluster, names, *a)]
    assert not wrong, f"RBAC differs from what the operator needs: {wrong}"


def test_the_service_account_token_is_the_identity_of_the_chart_rbac(
    cluster: Cluster, chart: Path, names: ChartNames, tmp_path: Path
) -> None:
    """What the operator pod mounts, minted for a local run: it reads its webhook, not the Secrets."""
    install_chart(
        cluster,
        chart,
        release=names.release,
        namespace=names.namespace,
        values=release_values(cluster, names),
        wait=False,
    )
    kubeconfig = service_account_kubeconfig(cluster, names, tmp_path / "operator.kubeconfig")
    as_operator = Cluster(kubeconfig=kubeconfig, bin_dir=cluster.bin_dir, node_name="", pod_cidr="")
    whoami = as_operator.kubectl("auth", "whoami", "-o", "jsonpath={.status.userInfo.username}").stdout
    assert whoami == f"system:serviceaccount:{names.namespace}:{names.service_account}"
    as_operator.kubectl("get", "mutatingwebhookconfiguration", names.webhook_configuration)
    denied = as_operator.kubectl("get", "secrets", "-n", names.namespace, check=False)
    assert denied.returncode != 0
    assert "Forbidden" in denied.stderr, denied.stderr
    args = installed_operator_args(cluster, names)
    assert args[0] == "operator"
    assert f"--webhook-configuration={names.webhook_configuration}" in args


def test_the_operator_under_the_chart_service_account_issues_its_certificate_and_a_valid_ca_bundle(
    cluster: Cluster, chart: Path, names: ChartNames, tmp_path: Path
) -> None:
    """The chart's command line and RBAC are enough for the certificate path: run the operator locally
    with exactly the installed arguments (listeners on loopback) and the ServiceAccount's token."""
    install_chart(
        cluster,
        chart,
        release=names.release,
        namespace=names.namespace,
        values=release_values(cluster, names),
    )
    kubeconfig = service_account_kubeconfig(cluster, names, tmp_path / "operator.kubeconfig")
    args = with_local_listeners(installed_operator_args(cluster, names))
    log_path = tmp_path / "operator.log"
    with operator_process(args, kubeconfig, log_path) as operator:
        bundle = written_ca_bundle(cluster, names, operator, log_path)
        secret = get_object(cluster, "secret", names.webhook_secret, names.namespace)
        assert secret is not None
        assert secret["type"] == "kubernetes.io/tls"
        assert base64.b64decode(bundle) == base64.b64decode(secret["data"]["ca.crt"])

        ca = x509.load_pem_x509_certificate(base64.b64decode(bundle))
        serving = x509.load_pem_x509_certificate(base64.b64decode(secret["data"]["tls.crt"]))
        serving.verify_directly_issued_by(ca)
        sans = serving.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
        assert f"{names.service}.{names.namespace}.svc" in sans.get_values_for_type(x509.DNSName)

        time.sleep(2)  # let kopf start its watches: any RBAC gap shows up as a 403 in the log
        output = log_path.read_text()
        assert "Forbidden" not in output, output[-3000:]
        assert " 403" not in output, output[-3000:]


def test_a_team_with_the_built_in_edit_role_creates_edits_and_deletes_policies(
    cluster: Cluster, chart: Path, names: ChartNames
) -> None:
    """The chart aggregates policy rights into view/edit/admin: a user whose only right is the
    built-in `edit` ClusterRole, bound in its namespace, manages policies there (impersonated with
    --as/--as-group); `view` reads them; neither writes status, nor reaches another namespace."""
    install_chart(
        cluster, chart, release=names.release, namespace=names.namespace,
        values=release_values(cluster, names), wait=False,
    )  # fmt: skip
    team, other = f"{names.release}-team", f"{names.release}-other"
    for ns in (team, other):
        cluster.kubectl("create", "namespace", ns)
    try:
        for role, group in (("edit", "payments-devs"), ("view", "payments-auditors")):
            cluster.kubectl("create", "rolebinding", f"{group}-{role}", f"--clusterrole={role}",
                            f"--group={group}", "-n", team)  # fmt: skip
        dev = ("--as=jane", "--as-group=payments-devs")
        auditor = ("--as=sam", "--as-group=payments-auditors")

        def may(verb: str, namespace: str, *who: str) -> bool:
            answer = cluster.kubectl("auth", "can-i", verb, "cbp", "-n", namespace, *who, check=False)
            return answer.stdout.strip() == "yes"

        # The aggregation controller adds the chart's rules to the built-in roles asynchronously.
        cluster.wait_for("the chart's rules aggregated into edit", lambda: may("create", team, *dev))
        assert may("list", team, *auditor)
        assert not may("create", team, *auditor)
        assert not may("get", other, *dev)
        manifest = json.dumps(
            {"apiVersion": "breakwater.dev/v1alpha1", "kind": "CircuitBreakerPolicy",
             "metadata": {"name": "payments", "namespace": team},
             "spec": {"selector": {"matchLabels": {"app": "checkout"}},
                      "upstreams": [{"name": "payments", "host": "payments.shop.svc.cluster.local",
                                     "port": 8080, "listenPort": 15210}]}}
        )  # fmt: skip
        cluster.kubectl("create", "-f", "-", *dev, input=manifest)
        cluster.kubectl(
            "patch",
            "cbp",
            "payments",
            "-n",
            team,
            "--type=merge",
            "-p",
            '{"spec": {"mode": "Observe"}}',
            *dev,
        )
        assert (
            cluster.kubectl(
                "get", "cbp", "payments", "-n", team, "-o", "jsonpath={.spec.mode}", *auditor
            ).stdout
            == "Observe"
        )

        denied = [
            cluster.kubectl("patch", "cbp", "payments", "-n", team, "--subresource=status", "--type=merge",
                            "-p", '{"status": {"summary": {"state": "Closed"}}}', *dev, check=False),
            cluster.kubectl("delete", "cbp", "payments", "-n", team, *auditor, check=False),
            cluster.kubectl("create", "-f", "-", "-n", other, *dev, check=False,
                            input=manifest.replace(f'"namespace": "{team}"', f'"namespace": "{other}"')),
        ]  # fmt: skip
        for proc in denied:
            assert proc.returncode != 0
            assert "forbidden" in proc.stderr.lower(), proc.stderr

        cluster.kubectl("delete", "cbp", "payments", "-n", team, "--wait=false", *dev)
        assert get_object(cluster, "cbp", "payments", team) is None
    finally:
        for ns in (team, other):
            cluster.kubectl("delete", "namespace", ns, "--wait=false", check=False)
