"""The sidecar's ports on the real control plane: the operator's configured ports, a pod injected on
the old ones (15020/15080) still counted and served after the ports moved, and listenPort
collisions reported on the policy (PortConflict, an Event) instead of passing in silence."""

from __future__ import annotations

import json
import urllib.error
import urllib.request
from typing import Any

import pytest
import yaml

from breakwater.api.constants import ANNOTATION_SIDECAR_PORTS, SIDECAR_NAME
from breakwater.testing.operator import OperatorProcess
from breakwater.testing.sidecars import SidecarFleet
from breakwater.testing.upstream import FlakyUpstream
from tests.cluster.harness import call, condition, opt_in, pods, policy, start_clients, wait_accepted
from tests.conftest import Cluster

pytestmark = pytest.mark.cluster

ADMIN, PROXY = 16020, 16080  # this module's operator: not the defaults, so nothing passes by chance


@pytest.fixture(scope="module")
def operator_args() -> tuple[str, ...]:
    return (f"--sidecar-admin-port={ADMIN}", f"--sidecar-proxy-port={PROXY}", "--stale-after-seconds=8")


def payments_policy(port: int, *extra: dict[str, Any]) -> str:
    upstreams = [{"name": "payments", "host": "127.0.0.1", "port": port, "listenPort": 15210}, *extra]
    return json.dumps(
        {
            "apiVersion": "breakwater.dev/v1alpha1",
            "kind": "CircuitBreakerPolicy",
            "metadata": {"name": "payments"},
            "spec": {"selector": {"matchLabels": {"app": "checkout"}}, "upstreams": upstreams},
        }
    )


def as_injected_before(pod: dict[str, Any], name: str) -> dict[str, Any]:
    """The pod as an operator before configurable ports injected it: the sidecar on 15020/15080 and
    no ports annotation (everything else as the webhook writes it today)."""
    (sidecar,) = [c for c in pod["spec"]["initContainers"] if c["name"] == SIDECAR_NAME]
    args = sidecar["args"]
    args[args.index("--admin-port") + 1] = "15020"
    args[args.index("--proxy-port") + 1] = "15080"
    for port in sidecar["ports"]:
        port["containerPort"] = {ADMIN: 15020, PROXY: 15080}.get(port["containerPort"], port["containerPort"])
    meta = pod["metadata"]
    annotations = {k: v for k, v in meta["annotations"].items() if k != ANNOTATION_SIDECAR_PORTS}
    keep = ("containers", "initContainers", "volumes", "nodeName", "serviceAccountName")
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": name, "labels": {"app": "checkout"}, "annotations": annotations},
        "spec": {k: pod["spec"][k] for k in keep if k in pod["spec"]},
    }


def stats(admin_url: str) -> dict[str, Any]:
    with urllib.request.urlopen(admin_url + "/stats", timeout=5) as resp:
        body: dict[str, Any] = json.load(resp)
        return body


def served(url: str) -> bool:
    """Whether a listener answers 200 (a listener not bound yet refuses the connection)."""
    try:
        return call(url) == 200
    except urllib.error.URLError:
        return False


def events(cluster: Cluster, namespace: str, name: str, reason: str) -> list[dict[str, Any]]:
    out = cluster.kubectl(
        "get", "events", "-n", namespace, "--field-selector",
        f"involvedObject.name={name},reason={reason}", "-o", "json",
    ).stdout  # fmt: skip
    items: list[dict[str, Any]] = json.loads(out)["items"]
    return items


def test_a_pod_injected_on_the_old_ports_is_counted_served_and_told_about_a_port_it_cannot_take(
    cluster: Cluster,
    namespace: str,
    running_operator: OperatorProcess,
    upstream: FlakyUpstream,
    fleet: SidecarFleet,
    request: pytest.FixtureRequest,
) -> None:
    opt_in(cluster, namespace)
    cluster.apply(payments_policy(upstream.port), namespace=namespace)
    start_clients(cluster, namespace, fleet, replicas=1)
    (new,) = fleet.sidecars.values()
    (new_pod,) = pods(cluster, namespace, "deployment=checkout")
    assert new_pod["metadata"]["annotations"][ANNOTATION_SIDECAR_PORTS] == f"admin={ADMIN},proxy={PROXY}"
    assert new.admin_url.endswith(f":{ADMIN}")

    cluster.apply(yaml.safe_dump(as_injected_before(new_pod, "legacy-1")), namespace=namespace)

    def legacy_started() -> bool:
        fleet.sync()
        return "legacy-1" in fleet.sidecars

    cluster.wait_for("the legacy pod's sidecar", legacy_started, timeout=60, interval=0.5)
    fleet.wait_ready()
    legacy = fleet.sidecars["legacy-1"]
    (legacy_pod,) = [
        p for p in pods(cluster, namespace, "app=checkout") if p["metadata"]["name"] == "legacy-1"
    ]
    assert ANNOTATION_SIDECAR_PORTS not in legacy_pod["metadata"]["annotations"]  # admitted unchanged
    assert legacy.admin_url.endswith(":15020")  # the fleet runs the pod's own args, as the kubelet does
    assert call(legacy.admin_url + "/readyz") == 200
    assert call(legacy.url(15210) + "/pay") == call(new.url(15210) + "/pay") == 200

    def counted() -> dict[str, Any]:
        body = policy(cluster, namespace, "payments")
        ready = condition(body, "Ready").get("status") == "True"
        return body if ready and (body.get("status") or {}).get("pods", {}).get("reporting") == 2 else {}

    body = cluster.wait_for("both pods injected and reporting", counted, timeout=30)
    assert body["status"]["pods"] == {"selected": 2, "injected": 2, "reporting": 2, "stale": 0}
    assert condition(body, "PortConflict")["status"] == "False"

    # 15020 is free for upstreams now; the old sidecar binds it itself, so it cannot serve it.
    ledger_upstream = FlakyUpstream().start()
    request.addfinalizer(ledger_upstream.stop)
    ledger = {"name": "ledger", "host": "127.0.0.1", "port": ledger_upstream.port, "listenPort": 15020}
    cluster.apply(payments_policy(upstream.port, ledger), namespace=namespace)

    def conflicting() -> dict[str, Any]:
        found = condition(policy(cluster, namespace, "payments"), "PortConflict")
        return found if found.get("status") == "True" else {}

    port_conflict = cluster.wait_for("PortConflict", conflicting, timeout=30)
    assert port_conflict["reason"] == "ListenPortCollides"
    assert "1 pod (legacy-1): its sidecar binds listenPort 15020 (ledger) itself" in port_conflict["message"]
    cluster.wait_for("a PortConflict Event", lambda: events(cluster, namespace, "payments", "PortConflict"))
    cluster.wait_for("ledger served by the new sidecar", lambda: served(new.url(15020) + "/pay"), timeout=20)
    assert "ledger" not in stats(legacy.admin_url)["upstreams"]
    assert call(legacy.url(15210) + "/pay") == 200  # payments still served on the old pod
    # Both run the config the operator expects for them (the hash does not depend on the ports).
    body = cluster.wait_for("still both reporting", counted, timeout=30)
    assert body["status"]["pods"]["reporting"] == 2


def test_a_listen_port_the_app_or_its_mesh_binds_is_a_port_conflict_with_an_event(
    cluster: Cluster, namespace: str, running_operator: OperatorProcess
) -> None:
    opt_in(cluster, namespace)
    cluster.apply(payments_policy(8080), namespace=namespace)
    mesh = json.loads(payments_policy(8080))
    mesh["metadata"]["name"] = "meshed"
    mesh["spec"]["selector"] = {"matchLabels": {"app": "meshed"}}
    mesh["spec"]["upstreams"][0]["listenPort"] = 15001  # Envoy's outbound port in an Istio pod
    cluster.apply(json.dumps(mesh), namespace=namespace)
    wait_accepted(cluster, namespace, "payments")
    wait_accepted(cluster, namespace, "meshed")
    for name, labels, ports in [
        ("web-1", {"app": "checkout"}, [{"containerPort": 15210}]),
        ("mesh-1", {"app": "meshed", "sidecar.istio.io/inject": "true"}, []),
    ]:
        pod = {
            "apiVersion": "v1",
            "kind": "Pod",
            "metadata": {"name": name, "labels": labels},
            "spec": {
                "nodeName": cluster.node_name,
                "containers": [{"name": "app", "image": "registry.example/app:1", "ports": ports}],
            },
        }
        cluster.apply(json.dumps(pod), namespace=namespace)

    for policy_name, pod_name, words in [
        (
            "payments",
            "web-1",
            "ListenPortClash: the app already declares port 15210 (listenPort of payments)",
        ),
        ("meshed", "mesh-1", "MeshPortClash: Istio binds 15000-15090 in its pods: port 15001"),
    ]:

        def reported(policy_name: str = policy_name) -> dict[str, Any]:
            found = condition(policy(cluster, namespace, policy_name), "PortConflict")
            return found if found.get("status") == "True" else {}

        found = cluster.wait_for(f"PortConflict on {policy_name}", reported, timeout=30)
        assert f"1 pod ({pod_name}): {words}" in found["message"]
        ready = condition(policy(cluster, namespace, policy_name), "Ready")
        assert (ready["status"], ready["reason"]) == ("False", "PodsNotInjected")
        (event,) = cluster.wait_for(
            f"a PortConflict Event on {policy_name}",
            lambda policy_name=policy_name: events(cluster, namespace, policy_name, "PortConflict"),
            timeout=15,
        )
        assert event["type"] == "Warning"
        assert pod_name in event["message"]


def test_a_listen_port_the_operator_gives_the_sidecar_is_not_accepted(
    cluster: Cluster, namespace: str, running_operator: OperatorProcess
) -> None:
    """The CRD's rule knows only spec.sidecar and the built-in defaults; the operator's own ports
    are its to check: Accepted=False with the reason, and spec.sidecar is the way out."""
    body = json.loads(payments_policy(8080))
    body["spec"]["upstreams"][0]["listenPort"] = ADMIN
    cluster.apply(json.dumps(body), namespace=namespace)

    def refused() -> dict[str, Any]:
        found = condition(policy(cluster, namespace, "payments"), "Accepted")
        return found if found.get("status") == "False" else {}

    accepted = cluster.wait_for("Accepted=False", refused, timeout=30)
    assert accepted["reason"] == "ReservedListenPort"
    assert f"listenPort {ADMIN} (payments) is a port of the sidecar itself" in accepted["message"]
    body["spec"]["sidecar"] = {"adminPort": 17020}
    cluster.apply(json.dumps(body), namespace=namespace)
    wait_accepted(cluster, namespace, "payments")
