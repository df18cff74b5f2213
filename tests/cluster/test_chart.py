"""The Helm chart on a real control plane: install, restricted Pod Security, RBAC, upgrade, uninstall.

kwok plays the kubelet: the operator pod is bound to the kwok node (``nodeName``), so it is admitted,
scheduled and reported Running and Ready, but no operator process runs. What needs a running operator
(the caBundle it writes, the certificate in the Secret) is covered where the operator runs; here the
operator's caBundle write is simulated to prove that `helm upgrade` keeps it.

Every release gets a unique name (cluster-scoped objects are named from it) and a namespaceSelector
no namespace carries, so the API server never sends another test's pods to a webhook with no server.
"""

from __future__ import annotations

import base64
import contextlib
import json
import os
import subprocess
import sys
import textwrap
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from cryptography import x509

from breakwater.pki import CertificateAuthority
from breakwater.testing.controlplane import free_port
from tests.cluster.chart_helpers import (
    CRD_NAME,
    POLICY_WEBHOOK_NAME,
    WEBHOOK_NAME,
    ChartNames,
    crd_is_generated,
    helm_release_manifest,
    install_chart,
    installed_operator_args,
    prepare_chart,
    remove_leftovers,
    service_account_kubeconfig,
    uninstall_chart,
    unique_release,
)
from tests.conftest import Cluster

pytestmark = pytest.mark.cluster

RESTRICTED = {
    "pod-security.kubernetes.io/enforce": "restricted",
    "pod-security.kubernetes.io/enforce-version": "latest",
    "pod-security.kubernetes.io/warn": "restricted",
    "pod-security.kubernetes.io/audit": "restricted",
}
CLUSTER_SCOPED = {
    "ClusterRole",
    "ClusterRoleBinding",
    "MutatingWebhookConfiguration",
    "CustomResourceDefinition",
}


@pytest.fixture(scope="module")
def chart(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return prepare_chart(tmp_path_factory.mktemp("chart"))


@pytest.fixture
def restricted_namespace(cluster: Cluster, namespace: str) -> str:
    """The test's namespace, enforcing the `restricted` Pod Security Standard."""
    cluster.kubectl(
        "label", "namespace", namespace, "--overwrite", *(f"{k}={v}" for k, v in RESTRICTED.items())
    )
    return namespace


def release_values(cluster: Cluster, names: ChartNames, **overrides: Any) -> dict[str, Any]:
    """Values every test installs with: the operator pod on the kwok node, a webhook that selects no
    namespace of any other test, and the CRD only when the generated one exists (the stand-in must never
    replace a real CRD other suites rely on)."""
    values: dict[str, Any] = {
        "nodeName": cluster.node_name,
        "webhook": {"namespaceSelector": {"matchLabels": {"breakwater.dev/test-release": names.release}}},
        "crds": {"install": crd_is_generated()},
        # kwok reports the container Ready at once: no need to wait for probes.
        "readinessProbe": {"initialDelaySeconds": 0, "periodSeconds": 1},
    }
    for key, value in overrides.items():
        if isinstance(value, dict) and isinstance(values.get(key), dict):
            values[key] = {**values[key], **value}
        else:
            values[key] = value
    return values


@pytest.fixture
def names(
    request: pytest.FixtureRequest, cluster: Cluster, restricted_namespace: str
) -> Iterator[ChartNames]:
    """A unique release in the restricted namespace, cleaned up however the test ends."""
    chart_names = ChartNames(unique_release("bw"), restricted_namespace)
    yield chart_names
    remove_leftovers(cluster, chart_names)


def _get(cluster: Cluster, kind: str, name: str, namespace: str | None = None) -> dict[str, Any] | None:
    args = ["get", kind, name, "-o", "json", *(["-n", namespace] if namespace else [])]
    proc = cluster.kubectl(*args, check=False)
    if proc.returncode != 0:
        assert "NotFound" in proc.stderr, proc.stderr
        return None
    obj: dict[str, Any] = json.loads(proc.stdout)
    return obj


def _operator_pods(cluster: Cluster, names: ChartNames) -> list[dict[str, Any]]:
    out = cluster.kubectl("get", "pods", "-n", names.namespace, "-l", names.selector, "-o", "json").stdout
    pods: list[dict[str, Any]] = json.loads(out)["items"]
    return pods


def _ready_operator_pod(cluster: Cluster, names: ChartNames) -> dict[str, Any]:
    def ready() -> dict[str, Any] | None:
        for pod in _operator_pods(cluster, names):
            conditions = {c["type"]: c["status"] for c in pod.get("status", {}).get("conditions", [])}
            if pod["status"].get("phase") == "Running" and conditions.get("Ready") == "True":
                return pod
        return None

    pod: dict[str, Any] = cluster.wait_for("a Running, Ready operator pod", ready, timeout=60)
    return pod


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
        live = _get(cluster, obj["kind"], obj["metadata"]["name"], namespace)
        assert live is not None, f"{obj['kind']}/{obj['metadata']['name']} was not created"

    mwc = _get(cluster, "mutatingwebhookconfiguration", names.webhook_configuration)
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

    service = _get(cluster, "service", service_ref["name"], service_ref["namespace"])
    assert service is not None
    port = next(p for p in service["spec"]["ports"] if p["port"] == service_ref["port"])
    assert port["name"] == "webhook"

    pod = _ready_operator_pod(cluster, names)
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
        crd = _get(cluster, "crd", CRD_NAME)
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
    pod = _ready_operator_pod(cluster, names)
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
        ("create", "events", "-n", "shop"),
        ("create", "tokenreviews.authentication.k8s.io"),
        ("list", "customresourcedefinitions.apiextensions.k8s.io"),
        ("watch", "namespaces"),
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
        ("list", "configmaps", "-n", "shop"),
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


def _with_local_listeners(args: list[str]) -> list[str]:
    """The chart's operator command line, its listeners moved to free loopback ports."""
    moved = {
        flag: f"127.0.0.1:{free_port()}" for flag in ("--webhook-listen", "--liveness", "--report-listen")
    }
    return [
        f"{a.split('=', 1)[0]}={moved[a.split('=', 1)[0]]}" if a.split("=", 1)[0] in moved else a
        for a in args
    ]


@contextlib.contextmanager
def _operator_process(args: list[str], kubeconfig: Path, log_path: Path) -> Iterator[subprocess.Popen[bytes]]:
    """`breakwater <args>` authenticated by `kubeconfig` (the chart's ServiceAccount), stopped on exit."""
    with log_path.open("w") as log:
        operator = subprocess.Popen(
            [sys.executable, "-m", "breakwater.cli", *args, f"--kubeconfig={kubeconfig}"],
            stdout=log,
            stderr=subprocess.STDOUT,
            env={**os.environ, "KUBECONFIG": str(kubeconfig)},
        )
    try:
        yield operator
    finally:
        operator.terminate()
        try:
            operator.wait(timeout=20)
        except subprocess.TimeoutExpired:
            operator.kill()
            operator.wait()


def _written_ca_bundle(
    cluster: Cluster, names: ChartNames, operator: subprocess.Popen[bytes], log_path: Path
) -> str:
    def ca_bundle() -> str | None:
        mwc = _get(cluster, "mutatingwebhookconfiguration", names.webhook_configuration)
        assert operator.poll() is None, log_path.read_text()[-3000:]
        return mwc["webhooks"][0]["clientConfig"].get("caBundle") if mwc else None

    bundle: str = cluster.wait_for("the operator to write the caBundle", ca_bundle, timeout=60)
    return bundle


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
    args = _with_local_listeners(installed_operator_args(cluster, names))
    log_path = tmp_path / "operator.log"
    with _operator_process(args, kubeconfig, log_path) as operator:
        bundle = _written_ca_bundle(cluster, names, operator, log_path)
        secret = _get(cluster, "secret", names.webhook_secret, names.namespace)
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
    first_pod = _ready_operator_pod(cluster, names)

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

    mwc = _get(cluster, "mutatingwebhookconfiguration", names.webhook_configuration)
    assert mwc is not None
    webhook, policy_webhook = mwc["webhooks"]
    assert (webhook["failurePolicy"], webhook["timeoutSeconds"]) == ("Fail", 10)
    assert policy_webhook["failurePolicy"] == "Ignore", "a policy write never waits for the operator"
    assert policy_webhook["clientConfig"].get("caBundle") == ca_bundle
    assert webhook["clientConfig"].get("caBundle") == ca_bundle, (
        "helm upgrade must not wipe the operator's caBundle"
    )

    deployment = _get(cluster, "deployment", names.deployment, names.namespace)
    assert deployment is not None
    args = deployment["spec"]["template"]["spec"]["containers"][0]["args"]
    assert "--webhook-failure-policy=Fail" in args
    assert "--webhook-timeout-seconds=10" in args
    new_pod = _ready_operator_pod(cluster, names)
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
    _ready_operator_pod(cluster, names)
    manifest = helm_release_manifest(cluster, release=names.release, namespace=names.namespace)

    uninstall_chart(cluster, release=names.release, namespace=names.namespace)

    left = []
    for obj in manifest:
        namespace = None if obj["kind"] in CLUSTER_SCOPED else names.namespace
        if _get(cluster, obj["kind"], obj["metadata"]["name"], namespace) is not None:
            left.append(f"{obj['kind']}/{obj['metadata']['name']}")
    expected_left = [f"CustomResourceDefinition/{CRD_NAME}"] if crd_is_generated() else []
    assert left == expected_left
    cluster.wait_for("the operator pod to go", lambda: not _operator_pods(cluster, names), timeout=60)

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
    assert _get(cluster, "crd", CRD_NAME) is not None, "kept"

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
        crd = _get(cluster, "crd", CRD_NAME)
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
                - {{name: payments, host: payments.shop.svc.cluster.local, port: 8080, listenPort: 15001}}
              mode: Observe
              trip: {{consecutiveFailures: 5}}
            """
        )
        cluster.kubectl("apply", "--dry-run=server", "-f", "-", input=policy)
    finally:
        remove_leftovers(cluster, second)


def test_the_chart_rbac_carries_the_whole_policy_injection_and_status_flow(
    cluster: Cluster, chart: Path, names: ChartNames, tmp_path: Path
) -> None:
    """The operator under the chart's ServiceAccount token reconciles a policy, injects pods through the
    webhook, authenticates sidecar reports with TokenReview and writes status — and nothing more.

    The API server here cannot reach a Service (pod IPs are on loopback), so the test points the chart's
    webhook at the operator's loopback URL, as the Service would route in a real cluster."""
    from breakwater.testing.sidecars import SidecarFleet
    from breakwater.testing.upstream import FlakyUpstream
    from tests.cluster.harness import condition, deployment_manifest, install_crd, policy, wait_accepted

    install_crd(cluster)
    install_chart(
        cluster,
        chart,
        release=names.release,
        namespace=names.namespace,
        values=release_values(cluster, names),
    )
    kubeconfig = service_account_kubeconfig(cluster, names, tmp_path / "operator.kubeconfig")
    args = _with_local_listeners(installed_operator_args(cluster, names))
    listen = {a.split("=", 1)[0]: a.split("=", 1)[1] for a in args if "=" in a}
    webhook_url = f"https://{listen['--webhook-listen']}"
    args = [a for a in args if not a.startswith(("--webhook-service", "--report-url"))]
    args += [f"--webhook-url={webhook_url}", f"--report-url=https://{listen['--report-listen']}"]
    log_path = tmp_path / "operator.log"
    apps = f"{names.release}-apps"
    cluster.kubectl("create", "namespace", apps)
    cluster.kubectl(
        "label",
        "namespace",
        apps,
        f"breakwater.dev/test-release={names.release}",
        "breakwater.dev/injection=enabled",
    )
    upstream = FlakyUpstream().start()
    fleet = SidecarFleet(kubectl=cluster.tool("kubectl"), kubeconfig=cluster.kubeconfig, namespace=apps)
    with contextlib.ExitStack() as cleanup:
        cleanup.callback(cluster.kubectl, "delete", "namespace", apps, "--wait=false", check=False)
        cleanup.callback(upstream.stop)
        cleanup.callback(fleet.stop)
        operator = cleanup.enter_context(_operator_process(args, kubeconfig, log_path))
        bundle = _written_ca_bundle(cluster, names, operator, log_path)
        route = [{"op": "replace", "path": f"/webhooks/{i}/clientConfig",
                  "value": {"url": f"{webhook_url}/{path}", "caBundle": bundle}}
                 for i, path in enumerate(("inject-sidecar", "expect-policy"))]  # fmt: skip
        cluster.kubectl(
            "patch",
            "mutatingwebhookconfiguration",
            names.webhook_configuration,
            "--type=json",
            "-p",
            json.dumps(route),
        )
        manifest = {
            "apiVersion": "breakwater.dev/v1alpha1",
            "kind": "CircuitBreakerPolicy",
            "metadata": {"name": "payments", "namespace": apps},
            "spec": {
                "selector": {"matchLabels": {"app": "checkout"}},
                "upstreams": [
                    {"name": "payments", "host": "127.0.0.1", "port": upstream.port, "listenPort": 15001}
                ],
            },
        }
        cluster.apply(json.dumps(manifest))
        wait_accepted(cluster, apps, "payments")
        cluster.apply(deployment_manifest("checkout", node=cluster.node_name), namespace=apps)

        def started() -> bool:
            fleet.sync()
            return len(fleet.sidecars) == 2

        cluster.wait_for("2 injected pods with their sidecars", started, timeout=60, interval=0.5)
        fleet.wait_ready()
        body = cluster.wait_for(
            "Ready: injected and reporting through TokenReview",
            lambda: (
                (b := policy(cluster, apps, "payments"))
                and condition(b, "Ready").get("status") == "True"
                and b
            ),
            timeout=30,
        )
        assert body["status"]["pods"] == {"selected": 2, "injected": 2, "reporting": 2, "stale": 0}
        assert cluster.kubectl(
            "get", "configmap", "breakwater-sidecar-config", "-n", apps, "-o", "name"
        ).stdout
        output = log_path.read_text()
        assert "Forbidden" not in output, output[-3000:]
        assert " 403" not in output, output[-3000:]
        outside = subprocess.run(
            [cluster.tool("kubectl"), f"--kubeconfig={kubeconfig}", "get", "secrets", "-n", "kube-system"],
            capture_output=True, text=True, check=False,
        )  # fmt: skip
        assert outside.returncode != 0
        assert "forbidden" in outside.stderr.lower()
