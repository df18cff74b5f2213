"""Fixtures of the chart unit tests: the helm binary (no cluster needed) and a copy of the chart."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from breakwater.errors import ControlPlaneError
from breakwater.testing import prometheus
from breakwater.testing.controlplane import find_binaries
from tests.chart import prepare_chart


@pytest.fixture(scope="session")
def helm() -> Path:
    """The helm binary of the cached control-plane build; the chart tests skip without it."""
    try:
        path = find_binaries(build=False) / "helm"
    except ControlPlaneError as exc:
        reason = f"helm unavailable (run `make control-plane`): {exc}"
        if os.environ.get("BREAKWATER_REQUIRE_CLUSTER") == "1":
            pytest.fail(reason, pytrace=False)
        pytest.skip(reason)
    return path


USER_IMAGE = "registry.example/breakwater"


@pytest.fixture(scope="session")
def chart(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A copy of charts/breakwater (with a stand-in CRD until `make crds` has generated the real one),
    with `image.repository` set as every install must (the chart has no default image)."""
    copy = prepare_chart(tmp_path_factory.mktemp("chart"))
    values = copy / "values.yaml"
    text = values.read_text()
    assert '  repository: ""' in text
    values.write_text(text.replace('  repository: ""', f"  repository: {USER_IMAGE}", 1))
    return copy


@pytest.fixture(scope="session")
def promtool() -> Path:
    """promtool, built from the Prometheus Go module by `make promtool` (hack/build-prometheus.sh);
    the rule tests skip without it, except in CI."""
    try:
        path = prometheus.find_binaries("promtool", build=False) / "promtool"
    except ControlPlaneError as exc:
        reason = f"promtool unavailable (run `make promtool`): {exc}"
        if os.environ.get("BREAKWATER_REQUIRE_CLUSTER") == "1":
            pytest.fail(reason, pytrace=False)
        pytest.skip(reason)
    return path
