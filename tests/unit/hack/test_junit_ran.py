"""hack/junit_ran.py, the check .ci/run makes that both the cluster and the real-node suites ran: fed
the JUnit XML of a real pytest run."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from tests.conftest import REPO

CHECK = REPO / "hack" / "junit_ran.py"


def junit_of(tmp_path: Path, node_test: str) -> Path:
    for suite, body in (("cluster", "def test_a():\n    pass\n"), ("node", node_test)):
        (tmp_path / "tests" / suite).mkdir(parents=True)
        (tmp_path / "tests" / suite / f"test_{suite}.py").write_text("import pytest\n\n" + body)
    report = tmp_path / "report.xml"
    subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:randomly", "-p", "no:cacheprovider",
         f"--rootdir={tmp_path}", f"--junitxml={report}", str(tmp_path / "tests")],
        cwd=tmp_path, capture_output=True, check=False, timeout=120,
    )  # fmt: skip
    return report


def check(report: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, str(CHECK), str(report), "tests.cluster.", "tests.node."],
        capture_output=True,
        text=True,
        check=False,
    )


def test_both_suites_passing_is_green(tmp_path: Path) -> None:
    result = check(junit_of(tmp_path, "def test_b():\n    pass\n"))
    assert result.returncode == 0, result.stdout + result.stderr
    assert "tests.node.*: 1 passed" in result.stdout


def test_a_suite_that_only_skipped_is_not_green(tmp_path: Path) -> None:
    result = check(junit_of(tmp_path, "def test_b():\n    pytest.skip('no node')\n"))
    assert result.returncode == 1
    assert "tests.node.*: 0 passed" in result.stdout


def test_a_missing_report_is_a_clear_error(tmp_path: Path) -> None:
    result = check(tmp_path / "absent.xml")
    assert result.returncode == 1
    assert "cannot read" in result.stderr
    assert "Traceback" not in result.stderr
