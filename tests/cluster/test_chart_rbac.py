"""The chart's RBAC on a real control plane: the operator, authenticated as the chart's ServiceAccount,
does everything its flow needs (certificate, webhook caBundle, reconcile, injection, reports, status)
and nothing more.
"""

from __future__ import annotations

import base64
import contextlib
import json
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from cryptography import x509

from breakwater.testing.controlplane import free_port
from tests.chart import ChartNames
from tests.cluster.chart_helpers import (
    get_object,
    install_chart,
    installed_operator_args,
    release_values,
    service_account_kubeconfig,
)
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
        # every replica watches the sidecar ConfigMaps (a fieldSelector on the name; RBAC cannot
        # narrow a list to it)
        ("list", "configmaps", "--all-namespaces"),
        ("watch", "configmaps", "--all-namespaces"),
        ("create", "leases.coordination.k8s.io", "-n", ns),
        ("update", f"leases.coordination.k8s.io/{names.webhook_configuration}-leader", "-n", ns),
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
        ("update", "leases.coordination.k8s.io/another-lease", "-n", ns),
        ("create", "leases.coordination.k8s.io", "-n", "shop"),
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
        flag: f"127.0.0.1:{free_port()}"
        for flag in ("--webhook-listen", "--health-listen", "--report-listen")
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
        mwc = get_object(cluster, "mutatingwebhookconfiguration", names.webhook_configuration)
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
