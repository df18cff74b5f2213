"""The node's network reaches nothing outside this machine: no default route in its namespace or in a
pod, and cluster DNS answers cluster names only (it forwards nothing)."""

from __future__ import annotations

import json

from breakwater.testing.node import RealNode
from tests.conftest import Cluster
from tests.node import manifests as m

PROBE = """
import json, socket, subprocess
def resolve(name):
    try:
        return socket.gethostbyname(name)
    except OSError as exc:
        return "error: " + type(exc).__name__
routes = open('/proc/net/route').read().splitlines()[1:]
print(json.dumps({
    "service": resolve("payments.%s.svc.cluster.local"),
    "outside": resolve("example.com"),
    "default_route": any(line.split()[1] == "00000000" for line in routes),
}))
"""


def test_pods_resolve_cluster_names_only_and_have_no_default_route(
    real_node: RealNode, node_cluster: Cluster, workload_namespace: str, image: str
) -> None:
    cluster, ns = node_cluster, workload_namespace
    cluster.apply(m.upstream(ns, image))
    service_ip = json.loads(cluster.kubectl("get", "service", "payments", "-n", ns, "-o", "json").stdout)[
        "spec"
    ]["clusterIP"]
    pod = {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": "probe", "namespace": ns},
        "spec": {
            "restartPolicy": "Never",
            "containers": [
                {
                    "name": "probe",
                    "image": image,
                    "imagePullPolicy": "IfNotPresent",
                    "command": ["python", "-c", PROBE % ns],
                    "securityContext": m.RESTRICTED_CONTAINER,
                }
            ],
        },
    }
    cluster.apply(json.dumps(pod))
    cluster.wait_for(
        "the probe pod to finish",
        lambda: (
            json.loads(cluster.kubectl("get", "pod", "probe", "-n", ns, "-o", "json").stdout)["status"].get(
                "phase"
            )
            in ("Succeeded", "Failed")
        ),
        timeout=90,
        interval=0.5,
    )
    seen = json.loads(cluster.kubectl("logs", "probe", "-n", ns).stdout.strip().splitlines()[-1])
    assert seen["service"] == service_ip
    assert seen["outside"].startswith("error"), "CoreDNS must not forward names outside the cluster"
    assert seen["default_route"] is False
    routes = real_node.netns.routes()
    assert not [line for line in routes.splitlines() if line.startswith("default")], routes
