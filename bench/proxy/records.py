"""A benchmark's record: what ran it, when, on how loaded a machine; written as JSON and Markdown."""

from __future__ import annotations

import json
import shlex
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

__all__ = ["begin", "write"]


def _loadavg() -> list[str]:
    return Path("/proc/loadavg").read_text().split()[:3]


def begin() -> dict[str, Any]:
    """The record's head, taken before the benchmark runs."""
    return {
        "command": shlex.join([Path(sys.executable).name, *sys.argv]),
        "recorded": time.strftime("%Y-%m-%d %H:%M:%S %Z"),
        "load_before": _loadavg(),
    }


def write(record: dict[str, Any], out: Path, stem: str, markdown: Callable[[dict[str, Any]], str]) -> None:
    """Add the load after the run, then write ``out/stem.json`` and ``out/stem.md``."""
    record["load_after"] = _loadavg()
    out.mkdir(parents=True, exist_ok=True)
    (out / f"{stem}.json").write_text(json.dumps(record, indent=2) + "\n")
    (out / f"{stem}.md").write_text(markdown(record))
    print(f"wrote {out / (stem + '.md')}")
