"""Shared fixtures: the real control plane (`cluster`) and a fresh namespace per test (`namespace`).

Cluster tests run on the embedded control plane built by `make control-plane`, or on an existing
cluster when BREAKWATER_TEST_KUBECONFIG is set. Without either they skip with the reason, unless
BREAKWATER_REQUIRE_CLUSTER=1 (as in CI), where that is a failure.
"""

from __future__ import annotations

import contextlib
import os
import subprocess
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from hypothesis import settings

from breakwater.errors import ControlPlaneError
from breakwater.testing.controlplane import ControlPlane, find_binaries

REPO = Path(__file__).resolve().parents[1]

# Properties are checked for correctness, never for speed: on a shared, loaded machine hypothesis's
# default 200 ms deadline per example fails tests that are right (speed lives in bench/).
settings.register_profile("breakwater", deadline=None)
settings.load_profile("breakwater")


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Everything under tests/cluster/ is a cluster test and everything under tests/node/ a real-node
    test, marked or not."""
    for item in items:
        path = str(item.path).replace(os.sep, "/")
        if "tests/cluster/" in path:
            item.add_marker(pytest.mark.cluster)
        if "tests/node/" in path:
            item.add_marker(pytest.mark.node)


@dataclass
class Cluster:
    """A handle on the API server the cluster suites run against."""

    kubeconfig: Path
    bin_dir: Path | None
    node_name: str
    pod_cidr: str
    control_plane: ControlPlane | None = None

    def tool(self, name: str) -> str:
        return str(self.bin_dir / name) if self.bin_dir else name

    def kubectl(
        self, *args: str, input: str | None = None, check: bool = True, timeout: float = 60
    ) -> subprocess.CompletedProcess[str]:
        proc = subprocess.run(
            [self.tool("kubectl"), f"--kubeconfig={self.kubeconfig}", *args],
            input=input,
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
        )
        if check and proc.returncode != 0:
            raise AssertionError(f"kubectl {' '.join(args)} failed ({proc.returncode}):\n{proc.stderr}")
        return proc

    def apply(self, manifest: str, *, namespace: str | None = None) -> subprocess.CompletedProcess[str]:
        """`kubectl apply -f -` of a YAML or JSON manifest."""
        return self.kubectl("apply", *(["-n", namespace] if namespace else []), "-f", "-", input=manifest)

    def helm(self, *args: str, check: bool = True, timeout: float = 120) -> subprocess.CompletedProcess[str]:
        proc = subprocess.run(
            [self.tool("helm"), f"--kubeconfig={self.kubeconfig}", *args],
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
            env={**os.environ, "HELM_CACHE_HOME": str(self.kubeconfig.parent / "helm-cache")},
        )
        if check and proc.returncode != 0:
            raise AssertionError(f"helm {' '.join(args)} failed ({proc.returncode}):\n{proc.stderr}")
        return proc

    def api_client(self) -> Any:
        """The operator's own client (breakwater.k8s.client), for this control plane."""
        from breakwater.k8s.client import api_client

        return api_client(str(self.kubeconfig))

    def kubernetes_client(self) -> Any:
        """The official kubernetes client (the test extra), where a test wants an independent view."""
        from kubernetes import client, config

        configuration = client.Configuration()
        config.load_kube_config(config_file=str(self.kubeconfig), client_configuration=configuration)
        return client.ApiClient(configuration)

    def wait_established(self, crd: str, *, timeout: float = 60) -> None:
        """Wait until a CRD is Established and served.

        Polls instead of `kubectl wait`, which fails at once ("accessor error: <nil>") when it reads a
        CRD created so recently that its status has no conditions yet.
        """
        jsonpath = "jsonpath={.status.conditions[?(@.type=='Established')].status}"
        self.wait_for(
            f"CRD {crd} Established",
            lambda: self.kubectl("get", "crd", crd, "-o", jsonpath, check=False).stdout.strip() == "True",
            timeout=timeout,
        )

    def wait_for(self, what: str, check: Any, *, timeout: float = 30, interval: float = 0.2) -> Any:
        """Poll `check()` until it returns something truthy; fail with `what` after `timeout` seconds."""
        deadline = time.monotonic() + timeout
        last: Any = None
        while time.monotonic() < deadline:
            last = check()
            if last:
                return last
            time.sleep(interval)
        raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what} (last: {last!r})")


def _unavailable(reason: str) -> None:
    if os.environ.get("BREAKWATER_REQUIRE_CLUSTER") == "1":
        pytest.fail(
            f"cluster required (BREAKWATER_REQUIRE_CLUSTER=1) but unavailable: {reason}", pytrace=False
        )
    pytest.skip(f"no control plane: {reason}")


@contextlib.contextmanager
def own_cluster(**control_plane: Any) -> Iterator[Cluster]:
    """A control plane of the test run's own (`ControlPlane` keyword arguments, e.g. audit=True), or a
    skip (a failure with BREAKWATER_REQUIRE_CLUSTER=1) when its binaries are not built."""
    try:
        bin_dir = find_binaries(build=False)
    except ControlPlaneError as exc:
        _unavailable(str(exc))
        raise  # unreachable: _unavailable skips or fails
    started = ControlPlane(bin_dir=bin_dir, **control_plane)
    try:
        started.start()
    except ControlPlaneError as exc:
        _unavailable(str(exc))
    try:
        yield Cluster(
            kubeconfig=started.kubeconfig,
            bin_dir=bin_dir,
            node_name=started.node_name,
            pod_cidr=started.pod_cidr,
            control_plane=started,
        )
    finally:
        started.stop()


@pytest.fixture(scope="session")
def cluster() -> Iterator[Cluster]:
    existing = os.environ.get("BREAKWATER_TEST_KUBECONFIG")
    if existing:
        # An existing cluster needs a kwok-managed node (or any node whose pods' IPs are on loopback
        # of this machine) for the suites that start sidecars: name it in BREAKWATER_TEST_NODE.
        node = os.environ.get("BREAKWATER_TEST_NODE", "")
        yield Cluster(kubeconfig=Path(existing), bin_dir=None, node_name=node, pod_cidr="")
        return
    with own_cluster() as started:
        yield started


@pytest.fixture
def namespace(cluster: Cluster, request: pytest.FixtureRequest) -> Iterator[str]:
    """A fresh namespace for one test, with its default ServiceAccount ready; deleted afterwards."""
    name = f"t-{request.node.name[:40].lower().replace('_', '-').strip('-')}-{uuid.uuid4().hex[:6]}"
    name = "".join(ch for ch in name if ch.isalnum() or ch == "-")
    cluster.kubectl("create", "namespace", name)
    cluster.wait_for(
        f"default ServiceAccount in {name}",
        lambda: cluster.kubectl("get", "serviceaccount", "default", "-n", name, check=False).returncode == 0,
    )
    yield name
    cluster.kubectl("delete", "namespace", name, "--wait=false", check=False)
