"""The hot path runs as it was built: `make test-compiled` runs the proxy and breaker suites against
the mypyc build (`hack/build-compiled.sh`, as the image's) with ``BREAKWATER_EXPECT_COMPILED=1``;
the plain run, against the interpreted sources. Each must be what it claims, or the compiled run
would test the interpreter."""

from __future__ import annotations

import contextlib
import importlib
import logging
import os
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

from breakwater.proxy.compiled import compiled_modules, hot_path_build
from tests.unit.proxy.helpers import SidecarFactory, sidecar_doc, upstream_doc

ROOT = Path(__file__).resolve().parents[3]
MODULES = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["breakwater"]["compile"]["modules"]
EXPECT_COMPILED = os.environ.get("BREAKWATER_EXPECT_COMPILED") == "1"
BUILD = "compiled" if EXPECT_COMPILED else "interpreted"


def test_every_module_of_the_hot_path_is_compiled_exactly_in_the_compiled_build() -> None:
    for name in MODULES:
        importlib.import_module(name)
    compiled = set(compiled_modules()) & set(MODULES)
    assert compiled == (set(MODULES) if EXPECT_COMPILED else set())
    assert hot_path_build() == BUILD


def test_version_says_how_the_hot_path_was_built() -> None:
    out = subprocess.run(
        [sys.executable, "-c", "from breakwater.cli import main; main(['--version'])"],
        capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    assert out.returncode == 0, out.stderr
    assert out.stdout.startswith("breakwater ")
    assert out.stdout.rstrip().endswith(f"(hot path {BUILD})")


async def test_the_sidecars_start_line_says_how_the_hot_path_was_built(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO)
    async with contextlib.AsyncExitStack() as stack:
        await SidecarFactory(tmp_path, stack)(sidecar_doc(upstream_doc("up", 9)))
    (started,) = [r for r in caplog.records if r.getMessage() == "sidecar started"]
    assert started.fields["hot_path"] == BUILD  # type: ignore[attr-defined]
