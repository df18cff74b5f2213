"""Fail when a Python module grows past the line limit of `[tool.breakwater.lint]` in pyproject.toml.

Small modules are part of the house style (a module says one thing); the few exceptions are named in
the allowlist with the reason, so that growing one is a decision, not an accident.

    python hack/check_module_size.py        (run by `make lint`)
"""

from __future__ import annotations

import sys
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
TREES = ("operator", "tests", "bench", "hack")


def main() -> int:
    config = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["breakwater"]["lint"]
    limit: int = config["max-module-lines"]
    allowed: dict[str, str] = config.get("allow-long-modules", {})
    too_long = []
    for tree in TREES:
        for path in sorted((ROOT / tree).rglob("*.py")):
            if ".venv" in path.parts or "build" in path.parts:
                continue
            relative = path.relative_to(ROOT).as_posix()
            lines = len(path.read_text().splitlines())
            if lines > limit and relative not in allowed:
                too_long.append(
                    f"{relative}: {lines} lines (limit {limit}; split it, or allowlist it with a reason)"
                )
    stale = [name for name in allowed if not (ROOT / name).exists()]
    for name in stale:
        too_long.append(f"{name}: allowlisted in pyproject.toml but does not exist")
    for line in too_long:
        print(line, file=sys.stderr)
    return 1 if too_long else 0


if __name__ == "__main__":
    sys.exit(main())
