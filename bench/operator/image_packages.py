"""Run the operator with the image's packages: what the dev venv has only for the tests is not found.

The image installs `.[fast]`; the dev venv also has the test extra, whose `kubernetes` client kopf
imports whenever it can (`kopf/_cogs/helpers/thirdparty.py`): 11 MiB of RSS the operator in the
image never has. A benchmark that measures the operator's memory runs it through this module
(`python bench/operator/image_packages.py operator ...`, or `block_test_packages()` first).
"""

from __future__ import annotations

import importlib.abc
import importlib.machinery
import sys
from collections.abc import Sequence
from types import ModuleType

TEST_ONLY = ("kubernetes", "kubernetes_validate", "requests")
"""Importable in the dev venv (pyproject's test extra, or only through it), absent from the image."""


class _NotInstalled(importlib.abc.MetaPathFinder):
    def find_spec(
        self, fullname: str, path: Sequence[str] | None, target: ModuleType | None = None
    ) -> importlib.machinery.ModuleSpec | None:
        if fullname.partition(".")[0] in TEST_ONLY:
            raise ModuleNotFoundError(f"No module named {fullname!r} (not in the image)", name=fullname)
        return None


def block_test_packages() -> None:
    sys.meta_path.insert(0, _NotInstalled())


if __name__ == "__main__":
    block_test_packages()
    from breakwater.cli import main

    sys.exit(main(sys.argv[1:]))
