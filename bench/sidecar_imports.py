"""What each import costs the sidecar's RSS: VmRSS of a fresh interpreter after one import statement.

Not a test. Run ``.venv/bin/python bench/sidecar_imports.py`` (a few seconds, no network). Each row is
its own ``python -c`` (the median of 3 runs), so rows are not additive: a later row includes what its
imports pull in. Writes ``bench/results/sidecar-imports.json`` and ``.md``.
"""

from __future__ import annotations

import argparse
import json
import shlex
import statistics
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]

ROWS: list[tuple[str, str]] = [
    ("nothing", "pass"),
    ("asyncio", "import asyncio"),
    ("uvloop", "import asyncio, uvloop"),
    ("uvloop + httptools (the fast path's parsers)", "import asyncio, uvloop, httptools"),
    ("ssl (the reporter's HTTPS client)", "import ssl"),
    ("pydantic", "import pydantic"),
    ("breakwater.api (every model: pydantic + the CRD)", "from breakwater.api import *"),
    ("breakwater.api.sidecar (the wire format's models; the operator's)", "import breakwater.api.sidecar"),
    (
        "breakwater.api.plain (the wire formats as the sidecar reads them)",
        "import breakwater.api.plain.parse, breakwater.api.plain.bundle, breakwater.api.plain.report",
    ),
    ("importlib.metadata (`breakwater --version` only)", "import importlib.metadata"),
    ("prometheus_client (no longer loaded)", "import prometheus_client"),
    ("aiohttp (client; the full path only)", "import aiohttp"),
    ("aiohttp.web (server; the full path only)", "import aiohttp.web"),
    ("breakwater.proxy.fast.server (the fast path)", "import breakwater.proxy.fast.server"),
    ("breakwater.proxy.main (what every pod loads)", "import breakwater.proxy.main"),
    ("the `breakwater proxy` command (cli + main)", "import breakwater.cli, breakwater.proxy.main"),
    ("breakwater.proxy.main + the full path", "import breakwater.proxy.main, breakwater.proxy.full.path"),
]

PROBE = "{stmt}\nimport re\nprint(re.search(r'VmRSS:\\s+(\\d+)', open('/proc/self/status').read()).group(1))"


def rss_kib(statement: str) -> int:
    runs = []
    for _ in range(3):
        out = subprocess.run(
            [sys.executable, "-c", PROBE.format(stmt=statement)], capture_output=True, text=True, check=True
        )
        runs.append(int(out.stdout.split()[-1]))
    return int(statistics.median(runs))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--out", type=Path, default=REPO / "bench" / "results")
    args = parser.parse_args()
    rows = [
        {"what": what, "statement": stmt, "rss_mb": round(rss_kib(stmt) / 1024, 1)} for what, stmt in ROWS
    ]
    doc = {
        "command": shlex.join([sys.executable.rsplit("/", 1)[-1], *sys.argv]),
        "recorded": time.strftime("%Y-%m-%d %H:%M:%S %Z"),
        "python": sys.version.split()[0],
        "rows": rows,
    }
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "sidecar-imports.json").write_text(json.dumps(doc, indent=2) + "\n")
    lines = [
        "# What each import costs the sidecar's RSS",
        "",
        f"Recorded {doc['recorded']} by `{doc['command']}`, Python {doc['python']}. VmRSS of a fresh",
        "interpreter after the statement (median of 3); rows are not additive.",
        "",
        "| after | statement | RSS MB |",
        "| --- | --- | ---: |",
        *(f"| {r['what']} | `{r['statement']}` | {r['rss_mb']} |" for r in rows),
        "",
    ]
    (args.out / "sidecar-imports.md").write_text("\n".join(lines))
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
