"""Fixtures of the cluster suites that run the operator: one operator per test module."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from breakwater.testing.controlplane import free_port
from breakwater.testing.operator import OperatorProcess
from breakwater.testing.sidecars import SidecarFleet
from breakwater.testing.upstream import FlakyUpstream
from tests.chart import ChartNames, prepare_chart, unique_release
from tests.cluster.chart_helpers import RESTRICTED, remove_leftovers
from tests.cluster.harness import install_crd
from tests.conftest import Cluster


@pytest.fixture(scope="module")
def operator_args() -> tuple[str, ...]:
    """Extra `breakwater operator` flags; a module overrides this fixture to change them."""
    return ()


@pytest.fixture(scope="module")
def operator(
    cluster: Cluster, tmp_path_factory: pytest.TempPathFactory, operator_args: tuple[str, ...]
) -> Iterator[OperatorProcess]:
    install_crd(cluster)
    proc = OperatorProcess(
        kubeconfig=cluster.kubeconfig,
        kubectl=cluster.tool("kubectl"),
        workdir=tmp_path_factory.mktemp("operator"),
        extra_args=operator_args,
        metrics_port=free_port(),  # a test may scrape it; replica() gives another replica its own
    )
    proc.start()
    yield proc
    proc.cleanup()


@pytest.fixture
def running_operator(operator: OperatorProcess) -> OperatorProcess:
    """The module's operator, restarted if an earlier test stopped it."""
    if operator.process is None:
        operator.start()
    return operator


@pytest.fixture
def upstream() -> Iterator[FlakyUpstream]:
    """A real HTTP upstream on loopback that can be made to fail."""
    server = FlakyUpstream().start()
    yield server
    server.stop()


@pytest.fixture(scope="module")
def report_interval() -> float:
    """Seconds between a fleet sidecar's reports; a module overrides it to hold for fewer seconds."""
    return 2.0


@pytest.fixture
def fleet(cluster: Cluster, namespace: str, report_interval: float) -> Iterator[SidecarFleet]:
    """A real sidecar process for every injected pod of the test's namespace."""
    sidecars = SidecarFleet(
        kubectl=cluster.tool("kubectl"),
        kubeconfig=cluster.kubeconfig,
        namespace=namespace,
        report_interval=report_interval,
    )
    yield sidecars
    sidecars.stop()


# -- the Helm chart suites (test_chart*.py) -----------------------------------------------------


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


@pytest.fixture
def names(
    request: pytest.FixtureRequest, cluster: Cluster, restricted_namespace: str
) -> Iterator[ChartNames]:
    """A unique release in the restricted namespace, cleaned up however the test ends."""
    chart_names = ChartNames(unique_release("bw"), restricted_namespace)
    yield chart_names
    remove_leftovers(cluster, chart_names)
