"""The Helm chart on a real control plane: install, restricted Pod Security, upgrade, uninstall.

(Its RBAC, with the operator running under the chart's ServiceAccount: test_chart_rbac.py.)

kwok plays the kubelet: the operator pod is bound to the kwok node (``nodeName``), so it is admitted,
scheduled and reported Running and Ready, but no operator process runs. What needs a running operator
(the caBundle it writes, the certificate in the Secret) is covered where the operator runs; here the
operator's caBundle write is simulated to prove that `helm upgrade` keeps it.

Every release gets a unique name (cluster-scoped objects are named from it) and a namespaceSelector
no namespace carries, so the API server never sends another test's pods to a webhook with no server.
"""

from __future__ import annotations

import base64
import json
import os
import textwrap
from pathlib import Path

import pytest

from breakwater.pki import CertificateAuthority
from tests.chart import (
    CRD_NAME,
    POLICY_WEBHOOK_NAME,
    WEBHOOK_NAME,
    ChartNames,
    crd_is_generated,
    unique_release,
)
from tests.cluster.chart_helpers import (
    CLUSTER_SCOPED,
    get_object,
    helm_release_manifest,
    install_chart,
    operator_pods,
    ready_operator_pod,
    release_values,
    remove_leftovers,
    uninstall_chart,
)
from tests.conftest import Cluster

pytestmark = pytest.mark.cluster


def test_helm_install_creates_every_object_and_the_webhook_points_at_the_service_of_the_operator_pod(
    cluster: Cluster, chart: Path, names: ChartNames
) -> None:
    proc = install_chart(
        cluster,
        chart,
        release=names.release,
        namespace=names.namespace,
        values=release_values(cluster, names),
    )
    assert "kubectl label namespace <your-namespace> breakwater.dev/injection=enabled" in proc.stdout, "NOTES"

    manifest = helm_release_manifest(cluster, release=names.release, namespace=names.namespace)
    expected_kinds = {
        "ServiceAccount",
        "ClusterRole",
        "ClusterRoleBinding",
        "Role",
        "RoleBinding",
        "Service",
        "Deployment",
        "PodDisruptionBudget",
        "MutatingWebhookConfiguration",
    }
    if crd_is_generated():
        expected_kinds.add("CustomResourceDefinition")
    assert manifest.kinds() == expected_kinds
    for obj in manifest:
        namespace = None if obj["kind"] in CLUSTER_SCOPED else names.namespace
        live = get_object(cluster, obj["kind"], obj["metadata"]["name"], namespace)
        assert live is not None, f"{obj['kind']}/{obj['metadata']['name']} was not created"

    mwc = get_object(cluster, "mutatingwebhookconfiguration", names.webhook_configuration)
    assert mwc is not None
    webhook, policy_webhook = mwc["webhooks"]
    assert (webhook["name"], policy_webhook["name"]) == (WEBHOOK_NAME, POLICY_WEBHOOK_NAME)
    assert policy_webhook["clientConfig"]["service"]["path"] == "/expect-policy"
    service_ref = webhook["clientConfig"]["service"]
    assert (service_ref["name"], service_ref["namespace"], service_ref["path"]) == (
        names.service,
        names.namespace,
        "/inject-sidecar",
    )
    assert not webhook["clientConfig"].get("caBundle"), "empty until the operator writes it"

    service = get_object(cluster, "service", service_ref["name"], service_ref["namespace"])
    assert service is not None
    port = next(p for p in service["spec"]["ports"] if p["port"] == service_ref["port"])
    assert port["name"] == "webhook"

    pod = ready_operator_pod(cluster, names)
    assert pod["spec"]["nodeName"] == cluster.node_name
    assert pod["spec"]["serviceAccountName"] == names.service_account

    # The Service selects this pod and its webhook port lands on the container's webhook port. (Its
    # EndpointSlice stays empty here: the API server refuses loopback addresses, and kwok's pod IPs
    # are loopback by design.)
    labels = pod["metadata"]["labels"]
    assert service["spec"]["selector"].items() <= labels.items()
    [container] = pod["spec"]["containers"]
    target = next(p for p in container["ports"] if p["name"] == port["targetPort"])
    assert target["containerPort"] == 9443
    assert "--webhook-listen=0.0.0.0:9443" in container["args"]

    if crd_is_generated():
        crd = get_object(cluster, "crd", CRD_NAME)
        assert crd is not None
        assert crd["metadata"]["annotations"]["helm.sh/resource-policy"] == "keep"


def test_the_operator_pod_is_admitted_under_restricted_pod_security(
    cluster: Cluster, chart: Path, names: ChartNames
) -> None:
    # The control: this namespace really rejects a pod that is not `restricted`.
    plain = textwrap.dedent(
        f"""
        apiVersion: v1
        kind: Pod
        metadata: {{name: plain, namespace: {names.namespace}}}
        spec:
          nodeName: {cluster.node_name}
          containers: [{{name: c, image: example.invalid/c:1}}]
        """
    )
    rejected = cluster.kubectl("apply", "--dry-run=server", "-f", "-", input=plain, check=False)
    assert rejected.returncode != 0
    assert "violates PodSecurity" in rejected.stderr, rejected.stderr

    proc = install_chart(
        cluster,
        chart,
        release=names.release,
        namespace=names.namespace,
        values=release_values(cluster, names),
    )
    assert "PodSecurity" not in proc.stderr, proc.stderr
    pod = ready_operator_pod(cluster, names)
    assert pod["spec"]["securityContext"]["runAsNonRoot"] is True
    assert pod["spec"]["containers"][0]["securityContext"]["readOnlyRootFilesystem"] is True

    # Re-asserting the level checks every existing pod against it: a violation comes back as a warning.
    relabel = cluster.kubectl(
        "label", "namespace", names.namespace, "--overwrite", "--dry-run=server",
        "pod-security.kubernetes.io/enforce=restricted",
    )  # fmt: skip
    assert "violate" not in relabel.stderr, relabel.stderr
    events = cluster.kubectl(
        "get", "events", "-n", names.namespace, "--field-selector", "reason=FailedCreate", "-o", "name"
    ).stdout
    assert not events.strip(), f"the ReplicaSet failed to create pods: {events}"


def test_helm_upgrade_changes_the_webhook_and_keeps_the_ca_bundle_the_operator_wrote(
    cluster: Cluster, chart: Path, names: ChartNames
) -> None:
    install_chart(
        cluster,
        chart,
        release=names.release,
        namespace=names.namespace,
        values=release_values(cluster, names),
    )
    first_pod = ready_operator_pod(cluster, names)

    # What the operator does at start-up (--webhook-manage=ca-only): patch its CA into the webhook.
    ca_bundle = base64.b64encode(CertificateAuthority("breakwater-test-ca").cert_pem).decode()
    patch = [
        {"op": "add", "path": f"/webhooks/{i}/clientConfig/caBundle", "value": ca_bundle} for i in (0, 1)
    ]
    cluster.kubectl(
        "patch",
        "mutatingwebhookconfiguration",
        names.webhook_configuration,
        "--type=json",
        "-p",
        json.dumps(patch),
    )

    values = release_values(cluster, names, webhook={"failurePolicy": "Fail", "timeoutSeconds": 10})
    install_chart(
        cluster, chart, release=names.release, namespace=names.namespace, values=values, upgrade=True
    )

    mwc = get_object(cluster, "mutatingwebhookconfiguration", names.webhook_configuration)
    assert mwc is not None
    webhook, policy_webhook = mwc["webhooks"]
    assert (webhook["failurePolicy"], webhook["timeoutSeconds"]) == ("Fail", 10)
    assert policy_webhook["failurePolicy"] == "Ignore", "a policy write never waits for the operator"
    assert policy_webhook["clientConfig"].get("caBundle") == ca_bundle
    assert webhook["clientConfig"].get("caBundle") == ca_bundle, (
        "helm upgrade must not wipe the operator's caBundle"
    )

    deployment = get_object(cluster, "deployment", names.deployment, names.namespace)
    assert deployment is not None
    args = deployment["spec"]["template"]["spec"]["containers"][0]["args"]
    assert "--webhook-failure-policy=Fail" in args
    assert "--webhook-timeout-seconds=10" in args
    new_pod = ready_operator_pod(cluster, names)
    assert new_pod["metadata"]["uid"] != first_pod["metadata"]["uid"], "the pod template changed: a new pod"
    history = cluster.helm("history", names.release, "-n", names.namespace, "-o", "json").stdout
    assert [r["status"] for r in json.loads(history)] == ["superseded", "deployed"]


def test_helm_uninstall_removes_everything_but_the_crd(
    cluster: Cluster, chart: Path, names: ChartNames
) -> None:
    install_chart(
        cluster,
        chart,
        release=names.release,
        namespace=names.namespace,
        values=release_values(cluster, names),
    )
    ready_operator_pod(cluster, names)
    manifest = helm_release_manifest(cluster, release=names.release, namespace=names.namespace)

    uninstall_chart(cluster, release=names.release, namespace=names.namespace)

    left = []
    for obj in manifest:
        namespace = None if obj["kind"] in CLUSTER_SCOPED else names.namespace
        if get_object(cluster, obj["kind"], obj["metadata"]["name"], namespace) is not None:
            left.append(f"{obj['kind']}/{obj['metadata']['name']}")
    expected_left = [f"CustomResourceDefinition/{CRD_NAME}"] if crd_is_generated() else []
    assert left == expected_left
    cluster.wait_for("the operator pod to go", lambda: not operator_pods(cluster, names), timeout=60)

    def leftovers() -> str:
        return cluster.kubectl(
            "get", "all,role,rolebinding,serviceaccount,pdb,secret", "-n", names.namespace,
            "-l", f"app.kubernetes.io/instance={names.release}", "-o", "name",
        ).stdout.strip()  # fmt: skip

    cluster.wait_for("no object of the release left", lambda: not leftovers(), timeout=60)


def test_a_kept_crd_is_adopted_by_the_next_release_as_documented(
    cluster: Cluster, chart: Path, names: ChartNames
) -> None:
    """After an uninstall kept the CRD, the same release name adopts it again by itself; another
    release name needs the one `kubectl annotate` that docs/install.md gives."""
    if not crd_is_generated():
        reason = "the generated CRD is not in the chart yet (make crds)"
        if os.environ.get("BREAKWATER_REQUIRE_CLUSTER") == "1":
            pytest.fail(reason)
        pytest.skip(reason)
    values = release_values(cluster, names)
    install_chart(cluster, chart, release=names.release, namespace=names.namespace, values=values)
    uninstall_chart(cluster, release=names.release, namespace=names.namespace)
    assert get_object(cluster, "crd", CRD_NAME) is not None, "kept"

    install_chart(
        cluster, chart, release=names.release, namespace=names.namespace, values=values, adopt_crd=False
    )
    uninstall_chart(cluster, release=names.release, namespace=names.namespace)

    second = ChartNames(unique_release("bw-again"), names.namespace)
    second_values = release_values(cluster, second)
    try:
        refused = install_chart(
            cluster,
            chart,
            release=second.release,
            namespace=second.namespace,
            values=second_values,
            adopt_crd=False,
            wait=False,
            check=False,
        )
        assert refused.returncode != 0
        assert "invalid ownership metadata" in refused.stderr, refused.stderr
        assert CRD_NAME in refused.stderr, refused.stderr
        cluster.helm("uninstall", second.release, "-n", second.namespace, check=False)

        # docs/install.md, "Upgrades and the CRD": hand the kept CRD to the new release.
        cluster.kubectl(
            "annotate", "crd", CRD_NAME, "--overwrite",
            f"meta.helm.sh/release-name={second.release}",
            f"meta.helm.sh/release-namespace={second.namespace}",
        )  # fmt: skip
        install_chart(
            cluster,
            chart,
            release=second.release,
            namespace=second.namespace,
            values=second_values,
            adopt_crd=False,
        )
        crd = get_object(cluster, "crd", CRD_NAME)
        assert crd is not None
        assert crd["metadata"]["annotations"]["meta.helm.sh/release-name"] == second.release
        assert {c["type"]: c["status"] for c in crd["status"]["conditions"]}.get("Established") == "True"

        # The first policy NOTES.txt suggests is one the installed CRD accepts.
        policy = textwrap.dedent(
            f"""
            apiVersion: breakwater.dev/v1alpha1
            kind: CircuitBreakerPolicy
            metadata: {{name: payments, namespace: {names.namespace}}}
            spec:
              selector: {{matchLabels: {{app: checkout}}}}
              upstreams:
                - {{name: payments, host: payments.shop.svc.cluster.local, port: 8080, listenPort: 15210}}
              mode: Observe
              trip: {{consecutiveFailures: 5}}
            """
        )
        cluster.kubectl("apply", "--dry-run=server", "-f", "-", input=policy)
    finally:
        remove_leftovers(cluster, second)
