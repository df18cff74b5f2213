"""The examples are valid policies, and the API reference is generated from the models."""

from __future__ import annotations

import argparse
from pathlib import Path

import pytest

from breakwater.api import parse_policy
from breakwater.api.constants import MESH_PORT_RANGES
from breakwater.api.docgen import EXAMPLE, api_markdown
from breakwater.api.manifests import load_documents
from breakwater.api.validate import run
from breakwater.injection.mesh import in_mesh_range
from tests.unit.api.invalid_table import EXAMPLES, REPO

DOCS = REPO / "docs" / "api.md"


def test_there_is_a_handful_of_examples() -> None:
    names = {path.stem for path in EXAMPLES}
    assert {"minimal", "full-featured", "observe-mode", "cached-fallback", "per-upstream-overrides"} <= names
    assert "transparent" in names


@pytest.mark.parametrize("path", EXAMPLES, ids=lambda p: p.name)
def test_every_example_passes_breakwater_validate(path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code = run(argparse.Namespace(files=[str(path)], recursive=False))
    assert code == 0
    assert capsys.readouterr().out == f"{path}: OK\n"


@pytest.mark.parametrize("path", EXAMPLES, ids=lambda p: p.name)
def test_every_example_parses_into_the_models_without_a_namespace(path: Path) -> None:
    (document,) = load_documents(path.read_text())
    policy = parse_policy(document)
    assert policy.metadata.namespace is None, "examples are applied with -n NAMESPACE"
    for upstream in policy.spec.upstreams:
        policy.spec.settings_for(upstream.name)


@pytest.mark.parametrize("path", EXAMPLES, ids=lambda p: p.name)
def test_every_example_can_be_injected_into_a_meshed_pod(path: Path) -> None:
    """The docs promise the examples' listenPorts are outside every mesh's range: a pod of Istio or
    Linkerd selected by an example is injected, not skipped as MeshPortClash."""
    spec = parse_policy(load_documents(path.read_text())[0]).spec
    ports = [(u.name, u.listen_port) for u in spec.upstreams if u.listen_port is not None]
    for mesh in MESH_PORT_RANGES:
        assert in_mesh_range(mesh, ports) == []


def test_the_examples_show_what_they_are_named_for() -> None:
    by_name = {p.stem: parse_policy(load_documents(p.read_text())[0]).spec for p in EXAMPLES}
    assert by_name["observe-mode"].mode == "Observe"
    assert by_name["cached-fallback"].fallback.kind == "Cached"
    assert any(u.overrides for u in by_name["per-upstream-overrides"].upstreams)
    assert by_name["transparent"].transparent
    full = by_name["full-featured"]
    assert full.trip.failure_rate
    assert full.trip.slow_calls
    assert full.retry
    assert full.bulkhead
    assert full.adaptive.enabled


def test_the_api_reference_is_what_the_models_generate() -> None:
    assert DOCS.read_text(encoding="utf-8") == api_markdown(EXAMPLE.read_text(encoding="utf-8")), (
        "docs/api.md drifted from the models: run `make docs`"
    )


def test_the_api_reference_covers_every_spec_field_and_the_complete_example() -> None:
    text = DOCS.read_text(encoding="utf-8")
    assert EXAMPLE.read_text(encoding="utf-8").strip() in text
    for heading in (
        "### spec.trip.failureRate",
        "### spec.trip.failureRate.window",
        "### status.upstreams[]",
    ):
        assert heading in text
    for field in (
        "`consecutiveFailures`",
        "`minimumCalls`",
        "`successesToClose`",
        "`budgetPercent`",
        "`wouldOpen`",
    ):
        assert field in text
