"""Fixtures of the real-node suites: one node per session, the chart installed from the built image.

The node (`breakwater.testing.node.RealNode`) is started once: control plane, containerd, kubelet,
kube-proxy, kube-scheduler and CoreDNS in a network namespace of their own, with the image built by
`make image` imported. Without root or a prerequisite the suites skip with the reason, and fail
instead under BREAKWATER_REQUIRE_CLUSTER=1 (CI). The session ends by checking that stopping the
node left nothing behind (mounts, namespaces, cgroups, processes).
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml

from breakwater.errors import ControlPlaneError
from breakwater.testing.controlplane import find_binaries
from breakwater.testing.node import RealNode, find_image, find_node_binaries
from breakwater.testing.nodeconfig import image_name
from breakwater.testing.nodehost import check_prerequisites
from tests.chart import ChartNames, prepare_chart
from tests.cluster.chart_helpers import install_chart, release_namespace
from tests.conftest import Cluster, _unavailable
from tests.node.manifests import RESTRICTED_LABELS, ready_pods

DIAGNOSIS_LINES = 200
_NODE = pytest.StashKey[RealNode]()


@pytest.fixture(scope="session")
def real_node(request: pytest.FixtureRequest) -> Iterator[RealNode]:
    problems = check_prerequisites()
    if problems:
        _unavailable("; ".join(problems))
    try:
        node = RealNode(
            control_plane_bin=find_binaries(build=False),
            node_bin=find_node_binaries(build=False),
            images=(find_image(build=True),),
            audit=True,  # tests/node/test_ha_on_node.py reads who wrote what
        )
        node.start()
    except ControlPlaneError as exc:
        _unavailable(str(exc))
        raise
    request.config.stash[_NODE] = node
    yield node
    node.stop()
    left = node.leftovers()
    assert not left, f"stopping the node left behind: {left}"


@pytest.fixture(scope="session")
def node_cluster(real_node: RealNode) -> Cluster:
    return Cluster(
        kubeconfig=real_node.kubeconfig,
        bin_dir=real_node.control_plane_bin,
        node_name=real_node.node_name,
        pod_cidr=real_node.pod_cidr,
    )


@pytest.fixture(scope="session")
def image(real_node: RealNode) -> str:
    """The name of the built image in the node's containerd (no registry: IfNotPresent finds it)."""
    name = image_name(real_node.images[0])
    assert name, "the image archive has no .ref file next to it"
    return name


@pytest.fixture(scope="session")
def chart(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return prepare_chart(tmp_path_factory.mktemp("chart"))


@dataclass
class Release:
    """A Helm release of the chart on the node, with the names it gave its objects."""

    names: ChartNames
    chart: Path
    values: dict[str, Any]

    @property
    def replicas(self) -> int:
        """How many operator pods the release runs: its `replicaCount`, or the chart's default."""
        default = yaml.safe_load((self.chart / "values.yaml").read_text())["replicaCount"]
        return int(self.values.get("replicaCount", default))

    @property
    def service_account(self) -> str:
        return self.names.service_account


def release_values(image: str, **overrides: Any) -> dict[str, Any]:
    repository, _, tag = image.rpartition(":")
    values: dict[str, Any] = {
        "image": {"repository": repository, "tag": tag, "pullPolicy": "IfNotPresent"},
        "operator": {"staleAfterSeconds": 15},
    }
    values.update(overrides)
    return values


@pytest.fixture(scope="module")
def installed(
    node_cluster: Cluster, chart: Path, image: str, request: pytest.FixtureRequest
) -> Iterator[Release]:
    """One release of the chart per test module, in a namespace enforcing `restricted`, with the
    module's `RELEASE_VALUES` over the defaults."""
    with release_namespace(node_cluster, RESTRICTED_LABELS) as names:
        yield Release(
            names=names,
            chart=chart,
            values=release_values(image, **getattr(request.module, "RELEASE_VALUES", {})),
        )


@pytest.fixture
def release(node_cluster: Cluster, installed: Release) -> Release:
    """The module's release, installed (again, after a test uninstalled it: tests run in random
    order) and with its operator pod Ready."""
    names = installed.names
    status = node_cluster.helm("status", names.release, "--namespace", names.namespace, check=False)
    if status.returncode != 0:
        install_chart(
            node_cluster,
            installed.chart,
            release=names.release,
            namespace=names.namespace,
            values=installed.values,
            timeout=240,
        )
    ready_pods(node_cluster, names.namespace, names.selector, installed.replicas, timeout=120)
    return installed


@pytest.fixture
def workload_namespace(node_cluster: Cluster, request: pytest.FixtureRequest) -> Iterator[str]:
    """A fresh namespace opted in to injection and enforcing `restricted`; deleted afterwards."""
    name = f"n-{request.node.name[:30].lower().replace('_', '-').strip('-')}-{uuid.uuid4().hex[:6]}"
    name = "".join(ch for ch in name if ch.isalnum() or ch == "-")
    node_cluster.kubectl("create", "namespace", name)
    node_cluster.kubectl("label", "namespace", name, "breakwater.dev/injection=enabled", *RESTRICTED_LABELS)
    node_cluster.wait_for(
        f"default ServiceAccount in {name}",
        lambda: node_cluster.kubectl("get", "sa", "default", "-n", name, check=False).returncode == 0,
    )
    yield name
    node_cluster.kubectl("delete", "namespace", name, "--wait=false", check=False)


def get_json(cluster: Cluster, *args: str) -> dict[str, Any]:
    body: dict[str, Any] = json.loads(cluster.kubectl("get", *args, "-o", "json").stdout)
    return body


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Iterator[None]:
    """A failed node test reports what the operator pods logged and what the API server said about
    its webhooks: the pods of a rolled-out release are gone by the time anyone looks."""
    outcome = yield
    report: pytest.TestReport = outcome.get_result()  # type: ignore[attr-defined]
    funcargs = getattr(item, "funcargs", {})
    if report.when != "call" or not report.failed or "node_cluster" not in funcargs:
        return
    cluster: Cluster = funcargs["node_cluster"]
    release = funcargs.get("release")
    names = release.names if isinstance(release, Release) else funcargs.get("names")
    if isinstance(names, ChartNames):
        logs = cluster.kubectl(
            "logs", "-n", names.namespace, "-l", names.selector, "--all-containers", "--prefix",
            f"--tail={DIAGNOSIS_LINES}", check=False,
        )  # fmt: skip
        report.sections.append(("operator pods' logs", logs.stdout + logs.stderr))
    namespace = funcargs.get("workload_namespace")
    if isinstance(namespace, str):
        seen = cluster.kubectl("get", "cbp,pods,events", "-n", namespace, "-o", "wide", check=False)
        policies = cluster.kubectl("get", "cbp", "-n", namespace, "-o", "yaml", check=False)
        report.sections.append((f"what {namespace} holds", seen.stdout + policies.stdout))
    node = item.config.stash.get(_NODE, None)
    if node is not None and node.control_plane is not None:
        for component in node.control_plane.components:
            if component.name == "kube-apiserver":
                lines = component.log_path.read_text(errors="replace").splitlines()
                said = [line for line in lines if "webhook" in line.lower()][-DIAGNOSIS_LINES:]
                report.sections.append(("the API server on webhooks", "\n".join(said)))
