"""Fixtures of the cluster suites that run the operator: one operator per test module."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.cluster.harness import OperatorProcess, install_crd
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
    log = tmp_path_factory.mktemp("operator") / "operator.log"
    proc = OperatorProcess(cluster=cluster, log_path=log, extra_args=operator_args)
    proc.start()
    yield proc
    proc.cleanup()


@pytest.fixture
def running_operator(operator: OperatorProcess) -> OperatorProcess:
    """The module's operator, restarted if an earlier test stopped it."""
    if operator.process is None:
        operator.start()
    return operator
