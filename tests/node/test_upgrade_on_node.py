"""`helm upgrade` from the previous chart version with client pods running (sidecar version skew).

The pods the old release injected run the old sidecar image until they are replaced: after the
upgrade they must keep enforcing, count as injected and reporting, and pick up a policy edited
through the new operator (docs/install.md, "Upgrading").

"The previous version" is the chart and image of the commit hack/build-previous-image.sh names, built
from that commit's own tree and Dockerfile and cached outside the clone like the current image (`make
node` builds it, so only a cold cache pays). Nothing is published yet: once a release is, it becomes
that release's tag.
"""

from __future__ import annotations

import json
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from breakwater.testing.controlplane import repo_root
from breakwater.testing.node import RealNode
from tests.chart import ChartNames
from tests.cluster.chart_helpers import install_chart, release_namespace
from tests.conftest import Cluster
from tests.node import manifests as m
from tests.node.conftest import get_json, release_values

SIDECAR = "breakwater-proxy"
CLIENTS = "app=checkout"


@dataclass(frozen=True)
class Previous:
    chart: Path
    image: str


@pytest.fixture(scope="module")
def previous(real_node: RealNode) -> Previous:
    """The previous chart and image (hack/build-previous-image.sh, built by `make node` and cached),
    the image imported into the node."""
    root = repo_root()
    assert root is not None, "the upgrade test runs from a source checkout"
    built = subprocess.run(
        ["bash", str(root / "hack" / "build-previous-image.sh")],
        stdout=subprocess.PIPE,
        text=True,
        check=False,
    )
    if built.returncode != 0:
        pytest.fail("hack/build-previous-image.sh failed (its output is above)")
    tree, archive = built.stdout.strip().splitlines()[-2:]
    return Previous(chart=Path(tree) / "charts" / "breakwater", image=real_node.import_image(Path(archive)))


@pytest.fixture
def names(node_cluster: Cluster) -> Iterator[ChartNames]:
    with release_namespace(node_cluster, m.RESTRICTED_LABELS) as names:
        yield names


def sidecar_image(pod: dict[str, Any]) -> str:
    (sidecar,) = [c for c in pod["spec"].get("initContainers") or () if c["name"] == SIDECAR]
    return str(sidecar["image"])


def restarts(pod: dict[str, Any]) -> int:
    return sum(s.get("restartCount", 0) for s in pod["status"].get("initContainerStatuses") or ())


def wait_ready_reporting(cluster: Cluster, ns: str, what: str, *, generation: int | None = None) -> None:
    """Until both client sidecars report the configuration of the policy's (given) generation."""
    cluster.wait_for(
        what,
        lambda: (
            (body := m.cbp(cluster, ns))["status"].get("observedGeneration")
            == (generation or body["metadata"]["generation"])
            and (body["status"].get("pods") or {}).get("reporting") == 2
            and m.condition(body, "Ready").get("status") == "True"
        ),
        timeout=120,
    )


@pytest.mark.timeout(600)  # two releases installed, one after the other
def test_helm_upgrade_from_the_previous_chart_keeps_old_sidecars_enforcing_counted_and_configured(
    node_cluster: Cluster,
    previous: Previous,
    chart: Path,
    image: str,
    names: ChartNames,
    workload_namespace: str,
) -> None:
    cluster, ns = node_cluster, workload_namespace
    install_chart(
        cluster,
        previous.chart,
        release=names.release,
        namespace=names.namespace,
        values=release_values(previous.image, replicaCount=1),
        timeout=240,
    )
    m.ready_pods(cluster, names.namespace, names.selector, 1)
    cluster.apply(m.upstream(ns, image))
    cluster.apply(m.policy(ns))
    m.ready_pods(cluster, ns, "app=payments-backend", 1)
    cluster.apply(m.client(ns, image, replicas=2))
    old_pods = m.ready_pods(cluster, ns, CLIENTS, 2)
    assert {sidecar_image(p) for p in old_pods} == {previous.image}
    wait_ready_reporting(cluster, ns, "the old release: 2 pods reporting, Ready")
    before = m.inject_webhook(get_json(cluster, "mutatingwebhookconfiguration", names.webhook_configuration))

    values = release_values(
        image, replicaCount=1, webhook={"timeoutSeconds": 8}, operator={"staleAfterSeconds": 20}
    )
    install_chart(
        cluster, chart, release=names.release, namespace=names.namespace, values=values, upgrade=True,
        timeout=240,
    )  # fmt: skip
    (operator,) = m.ready_pods(cluster, names.namespace, names.selector, 1)
    [container] = operator["spec"]["containers"]
    assert container["image"] == image
    assert "--stale-after-seconds=20" in container["args"], "the upgrade's values are in force"
    after = m.inject_webhook(get_json(cluster, "mutatingwebhookconfiguration", names.webhook_configuration))
    assert after["timeoutSeconds"] == 8
    assert after["clientConfig"]["caBundle"] == before["clientConfig"]["caBundle"], "the CA is kept"
    secrets = get_json(cluster, "secrets", "-n", names.namespace)["items"]
    kept = [s["metadata"]["name"] for s in secrets if not s["metadata"]["name"].startswith("sh.helm.")]
    assert kept == [names.webhook_secret], "one webhook Secret, reused across the upgrade"

    # The same pods, untouched, still running the previous sidecar...
    pods = m.ready_pods(cluster, ns, CLIENTS, 2)
    assert sorted(p["metadata"]["name"] for p in pods) == sorted(p["metadata"]["name"] for p in old_pods)
    assert {sidecar_image(p) for p in pods} == {previous.image}
    assert [restarts(p) for p in pods] == [0, 0]
    # ...heard by the new operator: injected, reporting the configuration it renders.
    wait_ready_reporting(cluster, ns, "the new operator: the old sidecars reporting, Ready")
    counts = m.cbp(cluster, ns)["status"]["pods"]
    assert (counts["selected"], counts["injected"], counts.get("stale", 0)) == (2, 2, 0), counts

    # They enforce: the upstream fails, the breaker opens, the clients get the fallback.
    m.set_upstream(cluster, ns, "fail")
    cluster.wait_for(
        "Open on the resource", lambda: m.upstream_state(m.cbp(cluster, ns)) == "Open", timeout=60
    )
    for pod in pods:
        name = pod["metadata"]["name"]
        m.client_stats(cluster, ns, name, reset=True)
        cluster.wait_for(
            f"{name} answered by the fallback",
            lambda name=name: m.client_stats(cluster, ns, name)["counts"].get("503 fallback-static", 0) > 0,
            timeout=30,
        )
    m.set_upstream(cluster, ns, "ok")

    # An edit made through the new operator reaches the old sidecars.
    cluster.kubectl(
        "patch", "cbp", "payments", "-n", ns, "--type=merge",
        "-p", json.dumps({"spec": {"trip": {"consecutiveFailures": 7}}}),
    )  # fmt: skip
    generation = m.cbp(cluster, ns)["metadata"]["generation"]
    wait_ready_reporting(cluster, ns, "the old sidecars running the edit", generation=generation)

    # A pod created now gets the new sidecar (the API server reaches the new operator with the kept CA).
    cluster.apply(m.client_pod(ns, image, "after-upgrade"))
    (new_pod,) = m.ready_pods(cluster, ns, "outage=yes", 1)
    assert sidecar_image(new_pod) == image
