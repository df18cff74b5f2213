"""The chart's RBAC against what the operator really does, read from the API server's audit log.

The operator runs under the chart's ServiceAccount token through its whole flow — its certificate and
the webhook's caBundle, a policy created, edited, tripped (status and an Event), the certificate
renewed on a restart, the policy deleted; pods injected through the webhook; sidecar reports
authenticated with TokenReview — on a control plane of this module's own whose API server writes an
audit log. Then every right the chart's ClusterRole and Role grant must appear in that log as a request
the operator made, and no request of the operator may have been refused.
"""

from __future__ import annotations

import base64
import contextlib
import json
import os
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from breakwater import pki
from breakwater.testing import audit
from tests.chart import ChartNames, Rendered, render
from tests.cluster.chart_helpers import (
    get_object,
    helm_release_manifest,
    install_chart,
    release_values,
    service_account_kubeconfig,
)
from tests.cluster.chart_operator import (
    local_flow_args,
    operator_process,
    route_webhooks_to,
    written_ca_bundle,
)
from tests.conftest import Cluster, own_cluster

pytestmark = pytest.mark.cluster

CONFIGMAP = "breakwater-sidecar-config"


@pytest.fixture(scope="module")
def cluster() -> Iterator[Cluster]:
    """This module's own control plane, with the API server's audit log (the session's has none)."""
    if os.environ.get("BREAKWATER_TEST_KUBECONFIG"):
        pytest.skip("needs the audit log of its own control plane (BREAKWATER_TEST_KUBECONFIG is set)")
    with own_cluster(audit=True) as audited:
        yield audited


def _call(url: str) -> int:
    try:
        with urllib.request.urlopen(url, timeout=5) as resp:
            return int(resp.status)
    except urllib.error.HTTPError as exc:
        return int(exc.code)


def _manifest(namespace: str, port: int) -> str:
    return json.dumps(
        {
            "apiVersion": "breakwater.dev/v1alpha1",
            "kind": "CircuitBreakerPolicy",
            "metadata": {"name": "payments", "namespace": namespace},
            "spec": {
                "selector": {"matchLabels": {"app": "checkout"}},
                "upstreams": [{"name": "payments", "host": "127.0.0.1", "port": port, "listenPort": 15210}],
                "trip": {"consecutiveFailures": 3},
                "open": {"duration": "60s", "jitter": 0},
            },
        }
    )


def test_the_chart_rbac_carries_the_whole_flow_and_grants_nothing_it_does_not_use(
    cluster: Cluster, chart: Path, names: ChartNames, tmp_path: Path
) -> None:
    from breakwater.testing.sidecars import SidecarFleet
    from breakwater.testing.upstream import FlakyUpstream
    from tests.cluster.harness import condition, deployment_manifest, install_crd, policy, wait_accepted

    assert cluster.control_plane is not None
    values = release_values(cluster, names)
    install_crd(cluster)
    install_chart(cluster, chart, release=names.release, namespace=names.namespace, values=values)
    kubeconfig = service_account_kubeconfig(cluster, names, tmp_path / "operator.kubeconfig")
    args, webhook_url = local_flow_args(cluster, names)
    log_path = tmp_path / "operator.log"
    apps = f"{names.release}-apps"
    cluster.kubectl("create", "namespace", apps)
    cluster.kubectl(
        "label", "namespace", apps, f"breakwater.dev/test-release={names.release}",
        "breakwater.dev/injection=enabled",
    )  # fmt: skip
    upstream = FlakyUpstream().start()
    fleet = SidecarFleet(kubectl=cluster.tool("kubectl"), kubeconfig=cluster.kubeconfig, namespace=apps)

    def reconciled() -> bool:
        body = policy(cluster, apps, "payments")
        return bool((body.get("status") or {}).get("observedGeneration") == body["metadata"]["generation"])

    with contextlib.ExitStack() as cleanup:
        cleanup.callback(cluster.kubectl, "delete", "namespace", apps, "--wait=false", check=False)
        cleanup.callback(upstream.stop)
        cleanup.callback(fleet.stop)
        with operator_process(args, kubeconfig, log_path) as operator:
            bundle = written_ca_bundle(cluster, names, operator, log_path)
            route_webhooks_to(cluster, names, webhook_url, bundle)

            # Create: reconciled into the namespace's ConfigMap; pods injected; reports make it Ready.
            cluster.apply(_manifest(apps, upstream.port))
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

            # Edit: the new generation reaches the ConfigMap and the status.
            cluster.kubectl(
                "patch", "cbp", "payments", "-n", apps, "--type=merge", "-p", '{"spec": {"timeout": "3s"}}'
            )  # fmt: skip
            cluster.wait_for("the edit reconciled", reconciled, timeout=30)

            # A trip: status Open and an Event from the status loop.
            upstream.failing = True
            for sidecar in fleet.sidecars.values():
                assert [_call(sidecar.url(15210) + "/pay") for _ in range(3)] == [500, 500, 500]
                assert _call(sidecar.url(15210) + "/pay") == 503
            cluster.wait_for(
                "an Event for the open upstream",
                lambda: "UpstreamOpen" in cluster.kubectl(
                    "get", "events", "-n", apps, "--field-selector", "involvedObject.name=payments",
                    "-o", "jsonpath={.items[*].reason}",
                ).stdout,
                timeout=30,
            )  # fmt: skip
            upstream.failing = False

        # A restart with a serving certificate that must be renewed: one signed by the stored CA, its
        # key its own, that covers none of the webhook's names (as after a Service rename). Every
        # replica can load it; the leader re-issues it, updating the Secret in place and keeping the
        # CA, so the sidecars' trust holds.
        secret = get_object(cluster, "secret", names.webhook_secret, names.namespace)
        assert secret is not None
        stored_ca = pki.CertificateAuthority.from_pem(
            base64.b64decode(secret["data"]["ca.crt"]), base64.b64decode(secret["data"]["ca.key"])
        )
        elsewhere = stored_ca.issue("elsewhere.invalid", dns_names=("elsewhere.invalid",), server=True)
        cluster.kubectl(
            "patch", "secret", names.webhook_secret, "-n", names.namespace, "--type=merge",
            "-p", json.dumps({"data": {
                "tls.crt": base64.b64encode(elsewhere.cert_pem).decode(),
                "tls.key": base64.b64encode(elsewhere.key_pem).decode(),
            }}),
        )  # fmt: skip
        secret = get_object(cluster, "secret", names.webhook_secret, names.namespace)
        assert secret is not None

        def renewed() -> dict[str, Any] | None:
            now = get_object(cluster, "secret", names.webhook_secret, names.namespace)
            return now if now and now["data"]["tls.crt"] != secret["data"]["tls.crt"] else None

        with operator_process(args, kubeconfig, log_path) as operator:
            now = cluster.wait_for("the serving certificate renewed in the Secret", renewed, timeout=60)
            assert now["data"]["ca.crt"] == secret["data"]["ca.crt"], "the CA is kept"
            assert operator.poll() is None, log_path.read_text()[-3000:]

            # Delete: the finalizer goes, the policy's key leaves the ConfigMap (which stays).
            cluster.kubectl("delete", "cbp", "payments", "-n", apps, "--wait=false")
            cluster.wait_for(
                "the policy deleted",
                lambda: get_object(cluster, "cbp", "payments", apps) is None,
                timeout=30,
            )
            cluster.wait_for(
                "the policy's key out of the ConfigMap",
                lambda: not (get_object(cluster, "configmap", CONFIGMAP, apps) or {}).get("data"),
                timeout=30,
            )
            time.sleep(1)  # let a last status write or Event land in the log

    assert_every_grant_used(cluster, names, log_path)


# The rights the flow cannot reach on purpose, each the fallback of a start-up race that a test cannot
# order: `get pods`, for a report that lands before the pod index has listed (controller/replica.py
# `_labels_from_api`); `get` of the sidecar ConfigMap, for bundles asked for before the ConfigMap
# watch has listed within `BundleCache.sync_wait` (controller/state.py). Every other right must show
# in the audit log.
RACE_ONLY = {
    audit.Grant("", "pods", "get"),
    audit.Grant("", "configmaps", "get", (CONFIGMAP,)),
}


def _operator_requests(cluster: Cluster, names: ChartNames, log_path: Path) -> list[audit.Request]:
    assert cluster.control_plane is not None
    user = f"system:serviceaccount:{names.namespace}:{names.service_account}"
    requests = audit.read_requests(cluster.control_plane.audit_log, user=user)
    refused = sorted({str(r) for r in requests if r.code == 403})
    assert not refused, f"the operator was refused: {refused}\n{log_path.read_text()[-3000:]}"
    return requests


def _operator_grants(rendered: Rendered, names: ChartNames) -> list[audit.Grant]:
    """What a release grants the operator's ServiceAccount (not the roles it adds for users)."""
    roles = [
        r
        for r in rendered.all("ClusterRole") + rendered.all("Role")
        if r["metadata"]["name"] == names.fullname
    ]
    return [grant for role in roles for grant in audit.grants_of(role)]


def assert_every_grant_used(cluster: Cluster, names: ChartNames, log_path: Path) -> None:
    """Every right the installed release grants the operator (but RACE_ONLY) was used, and nothing the
    operator asked for was refused."""
    requests = _operator_requests(cluster, names, log_path)
    installed = helm_release_manifest(cluster, release=names.release, namespace=names.namespace)
    grants = _operator_grants(installed, names)
    assert grants
    assert set(grants) >= RACE_ONLY
    used = sorted({f"{r.verb} {r.resource}{'.' + r.api_group if r.api_group else ''}" for r in requests})
    unused = audit.unused_grants([g for g in grants if g not in RACE_ONLY], requests)
    assert not unused, (
        "the chart grants what the operator never used over the whole flow:\n  "
        + "\n  ".join(map(str, unused))
        + "\nit used:\n  "
        + "\n  ".join(used)
    )


def test_with_watch_namespaces_the_rights_the_chart_adds_are_used(
    cluster: Cluster, chart: Path, names: ChartNames, tmp_path: Path
) -> None:
    """operator.watchNamespaces adds kopf's namespace observer (list, watch namespaces): used then."""
    from tests.cluster.harness import install_crd, wait_accepted

    apps = f"{names.release}-apps"
    values = release_values(cluster, names, operator={"watchNamespaces": [apps]})
    install_crd(cluster)
    install_chart(cluster, chart, release=names.release, namespace=names.namespace, values=values)
    defaults = render(cluster.tool("helm"), chart, release=names.release, namespace=names.namespace,
                      values=release_values(cluster, names))  # fmt: skip
    kubeconfig = service_account_kubeconfig(cluster, names, tmp_path / "operator.kubeconfig")
    args, webhook_url = local_flow_args(cluster, names)
    log_path = tmp_path / "operator.log"
    cluster.kubectl("create", "namespace", apps)
    try:
        cluster.kubectl("label", "namespace", apps, f"breakwater.dev/test-release={names.release}")
        with operator_process(args, kubeconfig, log_path) as operator:
            route_webhooks_to(
                cluster, names, webhook_url, written_ca_bundle(cluster, names, operator, log_path)
            )
            cluster.apply(_manifest(apps, 8080))
            wait_accepted(cluster, apps, "payments")
        added = set(
            _operator_grants(
                helm_release_manifest(cluster, release=names.release, namespace=names.namespace), names
            )
        )
        added -= set(_operator_grants(defaults, names))
        assert {(g.resource, g.verb) for g in added} == {("namespaces", "list"), ("namespaces", "watch")}
        unused = audit.unused_grants(added, _operator_requests(cluster, names, log_path))
        assert not unused, [str(g) for g in unused]
    finally:
        cluster.kubectl("delete", "namespace", apps, "--wait=false", check=False)
