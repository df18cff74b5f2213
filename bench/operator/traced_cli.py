"""`breakwater ...` with tracemalloc on: SIGUSR1 writes the top allocation sites to $BREAKWATER_TRACE_OUT.

Used by memory_profile.py to attribute the operator's memory; never part of a timed benchmark.
"""

from __future__ import annotations

import os
import signal
import sys
import tracemalloc
from pathlib import Path
from typing import Any

_previous: list[tracemalloc.Snapshot] = []


def _dump(signum: int, frame: Any) -> None:
    snapshot = tracemalloc.take_snapshot().filter_traces([tracemalloc.Filter(False, tracemalloc.__file__)])
    lines = []
    if _previous:
        diff = snapshot.compare_to(_previous[-1], "lineno")
        lines.append("## growth since the previous dump, by line")
        for stat in diff[:25]:
            where = f"{stat.traceback[0].filename}:{stat.traceback[0].lineno}"
            lines.append(f"{stat.size_diff / 2**20:+8.2f} MiB {stat.count_diff:+9d} blocks  {where}")
    _previous[:] = [snapshot]
    for group in ("filename", "lineno"):
        stats = snapshot.statistics(group)
        total = sum(s.size for s in stats)
        lines.append(f"## by {group}: {total / 2**20:.1f} MiB traced in all")
        for stat in stats[:25]:
            frame0 = stat.traceback[0]
            lines.append(
                f"{stat.size / 2**20:8.2f} MiB {stat.count:9d} blocks  {frame0.filename}:{frame0.lineno}"
            )
    out = Path(os.environ["BREAKWATER_TRACE_OUT"])
    out.with_suffix(".tmp").write_text("\n".join(lines) + "\n")
    out.with_suffix(".tmp").rename(out)  # whole or not at all for the reader


if __name__ == "__main__":
    tracemalloc.start(1)
    signal.signal(signal.SIGUSR1, _dump)
    from breakwater.cli import main

    sys.exit(main(sys.argv[1:]))
