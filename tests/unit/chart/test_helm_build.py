"""The helm that `make control-plane` builds is Helm's release build: a plain `helm template`, without
`--kube-version`, renders the chart (a helm built without Helm's LDFLAGS assumes Kubernetes v1.20 and
refuses the chart's kubeVersion)."""

from __future__ import annotations

import os
import re
import subprocess
from pathlib import Path

import yaml

from tests.chart import CHART_DIR, REPO


def _pinned(name: str) -> str:
    for line in (REPO / "hack" / "versions.env").read_text().splitlines():
        if line.startswith(f"{name}="):
            return line.split("=", 1)[1].strip()
    raise AssertionError(f"{name} not in hack/versions.env")


def _helm(helm: Path, *args: str, home: Path) -> subprocess.CompletedProcess[str]:
    env = {
        **os.environ,
        "HELM_CACHE_HOME": str(home),
        "HELM_CONFIG_HOME": str(home),
        "HELM_DATA_HOME": str(home),
    }
    return subprocess.run(
        [str(helm), *args], capture_output=True, text=True, timeout=60, check=False, env=env
    )


def test_helm_reports_its_pinned_version_as_a_release_build(helm: Path, tmp_path: Path) -> None:
    version = _helm(helm, "version", "--template", "{{.Version}} {{.GitTreeState}}", home=tmp_path)
    assert version.stdout == f"{_pinned('HELM_VERSION')} clean", version.stderr


def test_a_plain_helm_template_renders_the_chart_without_a_kube_version(
    helm: Path, chart: Path, tmp_path: Path
) -> None:
    """What a newcomer types first: no cluster, no --kube-version."""
    proc = _helm(helm, "template", "t", str(chart), home=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert "incompatible with Kubernetes" not in proc.stderr
    kinds = {doc["kind"] for doc in yaml.safe_load_all(proc.stdout) if doc}
    assert {"Deployment", "MutatingWebhookConfiguration", "CustomResourceDefinition"} <= kinds

    # Helm's default capabilities are the Kubernetes of the client-go it was built with, never older
    # than the pinned control plane's, so the chart's kubeVersion floor holds.
    capabilities = chart / "templates" / "zz-capabilities.yaml"
    capabilities.write_text("# {{ .Capabilities.KubeVersion.Major }}.{{ .Capabilities.KubeVersion.Minor }}\n")
    try:
        shown = _helm(
            helm, "template", "t", str(chart), "--show-only", f"templates/{capabilities.name}", home=tmp_path
        )
    finally:
        capabilities.unlink()
    assert shown.returncode == 0, shown.stderr
    found = re.search(r"# (\d+)\.(\d+)", shown.stdout)
    assert found, shown.stdout
    pinned = re.match(r"v(\d+)\.(\d+)", _pinned("KUBERNETES_VERSION"))
    assert pinned
    assert (int(found[1]), int(found[2])) >= (int(pinned[1]), int(pinned[2]))
    floor = re.search(
        r">=\s*(\d+)\.(\d+)", yaml.safe_load((CHART_DIR / "Chart.yaml").read_text())["kubeVersion"]
    )
    assert floor
    assert (int(found[1]), int(found[2])) >= (int(floor[1]), int(floor[2]))
