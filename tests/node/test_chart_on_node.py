"""The chart as a user installs it, on a real node: the built image runs the operator under the
`restricted` Pod Security Standard, the API server calls the webhook through its Service, sidecars
report through the same Service; the operator pod is deleted and comes back; uninstall. (`helm upgrade`
is tested from the previous version: tests/node/test_upgrade_on_node.py.)

The tests share one release; the `release` fixture installs it again after the uninstall test, so
they pass in any order.
"""

from __future__ import annotations

import base64
import time
from typing import Any

from cryptography import x509

from tests.chart import WEBHOOK_NAME
from tests.cluster.chart_helpers import uninstall_chart
from tests.conftest import Cluster
from tests.node import manifests as m
from tests.node.conftest import Release, get_json

SIDECAR = "breakwater-proxy"
# One replica: this module shows the single-replica trade-off (pods created while it is replaced start
# without the sidecar and are reported); test_ha_on_node.py runs the default two.
RELEASE_VALUES = {"replicaCount": 1}


def operator_pods(cluster: Cluster, release: Release) -> list[dict[str, Any]]:
    return m.pods(cluster, release.names.namespace, release.names.selector)


def ready_operator(cluster: Cluster, release: Release, *, timeout: float = 120) -> dict[str, Any]:
    (pod,) = m.ready_pods(cluster, release.names.namespace, release.names.selector, 1, timeout=timeout)
    return pod


def test_the_operator_pod_runs_the_built_image_ready_under_restricted_pod_security(
    node_cluster: Cluster, release: Release, image: str
) -> None:
    pod = ready_operator(node_cluster, release)
    namespace = get_json(node_cluster, "namespace", release.names.namespace)
    assert namespace["metadata"]["labels"]["pod-security.kubernetes.io/enforce"] == "restricted"
    [container] = pod["spec"]["containers"]
    assert container["image"] == image
    [status] = pod["status"]["containerStatuses"]
    assert status["ready"] is True
    assert status["restartCount"] == 0, "the operator must start at the first try"
    assert container["securityContext"]["readOnlyRootFilesystem"] is True
    log = node_cluster.kubectl("logs", "-n", release.names.namespace, pod["metadata"]["name"]).stdout
    assert "Traceback" not in log, log[-3000:]
    assert "Forbidden" not in log, log[-3000:]


def test_the_api_server_reaches_the_webhook_and_sidecars_reach_the_report_endpoint_through_the_service(
    node_cluster: Cluster, release: Release, workload_namespace: str, image: str
) -> None:
    cluster, ns = node_cluster, workload_namespace
    names = release.names
    mwc = get_json(cluster, "mutatingwebhookconfiguration", names.webhook_configuration)
    assert {w["name"] for w in mwc["webhooks"]} >= {WEBHOOK_NAME}
    for webhook in mwc["webhooks"]:
        assert "url" not in webhook["clientConfig"], "called through the Service, as in any cluster"
        assert webhook["clientConfig"]["service"]["name"] == names.service
        ca = x509.load_pem_x509_certificate(base64.b64decode(webhook["clientConfig"]["caBundle"]))
        assert ca.subject  # written by the operator at start-up

    slices = get_json(
        cluster, "endpointslices", "-n", names.namespace, "-l", f"kubernetes.io/service-name={names.service}"
    )
    operator_ip = ready_operator(cluster, release)["status"]["podIP"]
    addresses = {a for s in slices["items"] for e in s.get("endpoints") or () for a in e["addresses"]}
    assert addresses == {operator_ip}

    cluster.apply(m.upstream(ns, image))
    cluster.apply(m.policy(ns))
    cluster.wait_for(
        "Accepted", lambda: m.condition(m.cbp(cluster, ns), "Accepted").get("status") == "True", timeout=60
    )
    started = time.monotonic()
    cluster.apply(m.client(ns, image, replicas=2))
    clients = m.ready_pods(cluster, ns, "app=checkout", 2)
    print(f"apply -> 2 injected pods Ready: {time.monotonic() - started:.1f} s")
    for pod in clients:
        assert pod["metadata"]["annotations"]["breakwater.dev/injected"] == "true"
        assert any(c["name"] == SIDECAR for c in pod["spec"]["initContainers"])
    # Reporting (sessions over TCP, signed datagrams over UDP) to https://F.NS.svc:9444.
    cluster.wait_for(
        "both sidecars reporting",
        lambda: (m.cbp(cluster, ns)["status"].get("pods") or {}).get("reporting") == 2,
        timeout=60,
    )


def test_pods_created_while_the_only_operator_replica_is_down_start_without_the_sidecar_and_are_reported(
    node_cluster: Cluster, release: Release, workload_namespace: str, image: str
) -> None:
    cluster, ns = node_cluster, workload_namespace
    names = release.names
    cluster.apply(m.upstream(ns, image))
    cluster.apply(m.policy(ns))
    cluster.wait_for(
        "Accepted", lambda: m.condition(m.cbp(cluster, ns), "Accepted").get("status") == "True", timeout=60
    )
    old = ready_operator(cluster, release)["metadata"]["name"]
    # Down, not replaced (a deleted pod's replacement is ready within seconds, and a terminating pod
    # answers admissions during its shutdown delay): the window in which nothing answers the webhook.
    deployment = f"deployment/{names.deployment}"
    cluster.kubectl("scale", deployment, "-n", names.namespace, "--replicas=0")

    def no_ready_endpoint() -> bool:
        slices = get_json(
            cluster,
            "endpointslices",
            "-n",
            names.namespace,
            "-l",
            f"kubernetes.io/service-name={names.service}",
        )
        # Not ready and not serving: a terminating pod still serving (its shutdown delay) keeps
        # getting admissions from kube-proxy, and injects.
        return not any(
            (c := e.get("conditions") or {}).get("ready") or c.get("serving")
            for s in slices["items"]
            for e in s.get("endpoints") or ()
        )

    cluster.wait_for(
        "the webhook Service without a serving endpoint", no_ready_endpoint, timeout=30, interval=0.1
    )
    # Pods, not a Deployment: admission happens in this very call, inside the outage.
    started = time.monotonic()
    for i in range(2):
        cluster.apply(m.client_pod(ns, image, f"during-outage-{i}"))
    created_in = time.monotonic() - started
    assert created_in < 10, f"creating 2 pods took {created_in:.1f} s while the operator was down"
    during = m.ready_pods(cluster, ns, "outage=yes", 2)
    uninjected = [p["metadata"]["name"] for p in during]
    for pod in during:
        assert "breakwater.dev/injected" not in (pod["metadata"].get("annotations") or {})
        assert not any(c["name"] == SIDECAR for c in pod["spec"].get("initContainers") or ())

    cluster.kubectl("scale", deployment, "-n", names.namespace, "--replicas=1")
    new = ready_operator(cluster, release)
    assert new["metadata"]["name"] != old
    m.wait_reported_uninjected(cluster, ns, uninjected)


def test_helm_uninstall_leaves_only_what_docs_install_md_says_it_leaves(
    node_cluster: Cluster, release: Release
) -> None:
    cluster = node_cluster
    names = release.names
    uninstall_chart(cluster, release=names.release, namespace=names.namespace)
    cluster.wait_for("the operator pod gone", lambda: not operator_pods(cluster, release), timeout=60)
    selector = f"app.kubernetes.io/instance={names.release}"
    for kind in ("deployment", "service", "serviceaccount", "role", "rolebinding", "poddisruptionbudget"):
        left = cluster.kubectl(
            "get", kind, "-n", names.namespace, "-l", selector, "-o", "name"
        ).stdout.split()
        assert not left, f"{kind} left by helm uninstall: {left}"
    for kind in ("clusterrole", "clusterrolebinding", "mutatingwebhookconfiguration"):
        left = cluster.kubectl("get", kind, "-l", selector, "-o", "name").stdout.split()
        assert not left, f"{kind} left by helm uninstall: {left}"
    # Documented as staying: the CRD (helm.sh/resource-policy: keep) and the operator's Secret.
    crd = get_json(cluster, "crd", "circuitbreakerpolicies.breakwater.dev")
    assert crd["metadata"]["annotations"]["helm.sh/resource-policy"] == "keep"
    secrets = [s["metadata"]["name"] for s in get_json(cluster, "secrets", "-n", names.namespace)["items"]]
    assert secrets == [names.webhook_secret], secrets
    cluster.kubectl("get", "cbp", "-A")  # the kept CRD still serves
