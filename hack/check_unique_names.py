"""Fail when two modules of operator/breakwater define a top-level class of the same name.

One name for one thing: a reader who meets `SidecarConfig` should not have to check which of two it is
(the pydantic model and its plain twin are `SidecarConfig` and `PlainSidecarConfig`, see
`api/plain/__init__.py`). A name that must stay shared is named in `allow-duplicate-classes` of
`[tool.breakwater.lint]` in pyproject.toml with the reason, as the long modules are.

    python hack/check_unique_names.py        (run by `make lint`)
"""

from __future__ import annotations

import ast
import sys
import tomllib
from collections import defaultdict
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "operator" / "breakwater"


def class_names(path: Path) -> list[str]:
    """The classes `path` defines at its top level (a class inside `if TYPE_CHECKING:` too)."""
    tree = ast.parse(path.read_text(), filename=str(path))
    names = []
    for node in tree.body:
        bodies = [node.body, node.orelse] if isinstance(node, ast.If) else [[node]]
        for body in bodies:
            names += [n.name for n in body if isinstance(n, ast.ClassDef)]
    return names


def main() -> int:
    config = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["breakwater"]["lint"]
    allowed: dict[str, str] = config.get("allow-duplicate-classes", {})
    where: dict[str, list[str]] = defaultdict(list)
    for path in sorted(PACKAGE.rglob("*.py")):
        for name in class_names(path):
            where[name].append(path.relative_to(ROOT).as_posix())
    problems = [
        f"class {name} is defined in {len(modules)} modules ({', '.join(modules)}): rename one so the name "
        "says which it is, or allowlist it with a reason"
        for name, modules in sorted(where.items())
        if len(modules) > 1 and name not in allowed
    ]
    problems += [
        f"class {name}: allowlisted in pyproject.toml but defined {len(where.get(name, []))} time(s)"
        for name in allowed
        if len(where.get(name, [])) < 2
    ]
    for line in problems:
        print(line, file=sys.stderr)
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
