"""The CRD ships in the chart as a guarded template, from the generated copy, kept on uninstall."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest
import yaml

from tests.chart import (
    CRD_NAME,
    CRD_RELATIVE_PATH,
    GENERATED_CRD,
    crd_is_generated,
    helm_template,
    render,
)


def test_the_crd_is_installed_by_default_and_kept_on_uninstall(helm: Path, chart: Path) -> None:
    crd = render(helm, chart, release="bw").one("CustomResourceDefinition", CRD_NAME)
    assert crd["metadata"]["annotations"]["helm.sh/resource-policy"] == "keep"
    assert crd["metadata"]["labels"]["app.kubernetes.io/instance"] == "bw"
    assert "status" not in crd


def test_the_crd_content_is_the_file_in_the_chart_untouched_but_for_metadata(helm: Path, chart: Path) -> None:
    source = yaml.safe_load((chart / CRD_RELATIVE_PATH).read_text())
    crd = render(helm, chart).one("CustomResourceDefinition", CRD_NAME)
    assert crd["spec"] == source["spec"]
    assert crd["apiVersion"] == source["apiVersion"]
    for key, value in (source["metadata"].get("annotations") or {}).items():
        assert crd["metadata"]["annotations"][key] == value


def test_the_crd_can_be_left_out_or_deleted_with_the_release(helm: Path, chart: Path) -> None:
    assert render(helm, chart, values={"crds": {"install": False}}).maybe("CustomResourceDefinition") is None
    crd = render(helm, chart, values={"crds": {"keep": False}}).one("CustomResourceDefinition")
    assert "helm.sh/resource-policy" not in (crd["metadata"].get("annotations") or {})


def test_a_chart_without_its_generated_crd_fails_to_render_and_says_how_to_fix_it(
    helm: Path, chart: Path, tmp_path: Path
) -> None:
    broken = tmp_path / "breakwater"
    shutil.copytree(chart, broken)
    (broken / CRD_RELATIVE_PATH).unlink()
    proc = helm_template(helm, broken)
    assert proc.returncode != 0
    assert (
        "breakwater.dev_circuitbreakerpolicies.yaml is missing from the chart: run `make crds`" in proc.stderr
    )
    assert helm_template(helm, broken, set_values=["crds.install=false"]).returncode == 0


def test_the_chart_ships_the_generated_crd() -> None:
    """The chart's copy comes from `make crds` (the api engineer's generator); it must be there."""
    if not crd_is_generated():
        reason = f"{GENERATED_CRD} not generated yet: run `make crds`"
        if os.environ.get("CI") or os.environ.get("BREAKWATER_REQUIRE_CLUSTER") == "1":
            pytest.fail(reason, pytrace=False)
        pytest.skip(reason)
    crd = yaml.safe_load(GENERATED_CRD.read_text())
    assert crd["kind"] == "CustomResourceDefinition"
    assert crd["metadata"]["name"] == CRD_NAME
