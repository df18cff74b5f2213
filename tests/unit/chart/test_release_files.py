"""The files a release ships beside the code: LICENSE, CHANGELOG, the chart README, the version matrix.

Each is checked against the source it restates, so that none of them goes stale silently: the
license against pyproject.toml and Chart.yaml, the CHANGELOG against the versions, the matrix in
docs/install.md against hack/versions.env, and the packaged chart for what `helm package` ships.
"""

from __future__ import annotations

import re
import subprocess
import tarfile
import tomllib
from pathlib import Path

import yaml

import breakwater
from tests.chart import CHART_DIR, REPO

INSTALL = REPO / "docs" / "install.md"


def _chart() -> dict[str, object]:
    loaded: dict[str, object] = yaml.safe_load((CHART_DIR / "Chart.yaml").read_text())
    return loaded


def _pyproject() -> dict[str, object]:
    return tomllib.loads((REPO / "pyproject.toml").read_text())["project"]  # type: ignore[no-any-return]


def _pinned() -> dict[str, str]:
    pinned = {}
    for line in (REPO / "hack" / "versions.env").read_text().splitlines():
        if line and not line.startswith("#"):
            key, _, value = line.partition("=")
            pinned[key] = value.strip()
    return pinned


def _section(text: str, heading: str) -> str:
    start = text.index(f"\n## {heading}\n")
    end = text.find("\n## ", start + 1)
    return text[start : end if end != -1 else len(text)]


def test_the_license_is_apache_2_0_everywhere_it_is_declared() -> None:
    text = (REPO / "LICENSE").read_text()
    assert "Apache License\n                           Version 2.0, January 2004" in text
    assert "END OF TERMS AND CONDITIONS" in text
    assert (CHART_DIR / "LICENSE").read_text() == text, "the chart's LICENSE is a copy of the root one"
    assert _pyproject()["license"] == "Apache-2.0"
    annotations = _chart()["annotations"]
    assert isinstance(annotations, dict)
    assert annotations["licenses"] == "Apache-2.0"


def test_the_changelog_has_the_current_version_and_an_upgrading_note() -> None:
    text = (REPO / "CHANGELOG.md").read_text()
    version = str(_pyproject()["version"])
    assert version == breakwater.__version__ == _chart()["appVersion"]
    assert "## [Unreleased]" in text
    headings = re.findall(r"^## \[?([^\]\s]+)", text, flags=re.MULTILINE)
    assert headings[0] == "Unreleased"
    assert version in headings, f"CHANGELOG.md has no section for {version}: {headings}"
    assert "### Upgrading" in _section(text, "[Unreleased]")


def test_the_version_matrix_restates_hack_versions_env() -> None:
    """Every pinned version has a row naming its variable and its value (a bump of versions.env
    without the docs fails here), and the Python and Kubernetes floors are the declared ones."""
    table = _section(INSTALL.read_text(), "Tested versions")
    rows = [line for line in table.splitlines() if line.startswith("| ")]
    for key, value in _pinned().items():
        if key == "PAUSE_IMAGE":  # the image reference restates PAUSE_VERSION
            continue
        named = [row for row in rows if f"`{key}`" in row]
        assert named, f"no row of docs/install.md 'Tested versions' names {key}"
        for row in named:
            assert f"| {value} |" in row, f"{key}={value}, but docs/install.md says: {row}"
    assert f"`requires-python {_pyproject()['requires-python']}`" in table
    assert f"`kubeVersion: {_chart()['kubeVersion']}`" in table
    minor = ".".join(_pinned()["KUBERNETES_VERSION"].lstrip("v").split(".")[:2])
    assert any(row.startswith("| Kubernetes schemas") and f"| {minor} |" in row for row in rows)


def test_the_version_matrix_names_the_previous_version_the_upgrade_test_installs() -> None:
    script = (REPO / "hack" / "build-previous-image.sh").read_text()
    commit = re.search(r"^PREVIOUS_COMMIT=([0-9a-f]{40})\b", script, re.MULTILINE)
    assert commit, "hack/build-previous-image.sh pins PREVIOUS_COMMIT to a full commit id"
    table = _section(INSTALL.read_text(), "Tested versions")
    (row,) = [line for line in table.splitlines() if "`PREVIOUS_COMMIT`" in line]
    assert f"`{commit.group(1)[:12]}`" in row, row


def test_the_docs_link_the_release_files() -> None:
    install = INSTALL.read_text()
    for target in ("../charts/breakwater/README.md", "../CHANGELOG.md"):
        assert f"]({target})" in install, target
        assert (INSTALL.parent / target).resolve().is_file()


def test_helm_package_ships_the_readme_license_and_schema(helm: Path, tmp_path: Path) -> None:
    proc = subprocess.run(
        [str(helm), "package", str(CHART_DIR), "-d", str(tmp_path)],
        capture_output=True,
        text=True,
        check=False,
        env={"HOME": str(tmp_path), "PATH": "/usr/bin:/bin"},
    )
    assert proc.returncode == 0, proc.stderr
    (archive,) = tmp_path.glob("breakwater-*.tgz")
    with tarfile.open(archive) as tar:
        names = set(tar.getnames())
    for name in ("README.md", "LICENSE", "values.yaml", "values.schema.json", "Chart.yaml"):
        assert f"breakwater/{name}" in names, sorted(names)
