"""`breakwater ...` with tracemalloc on: SIGUSR1 writes the top allocation sites to $BREAKWATER_TRACE_OUT.

Used by memory_profile.py to attribute the operator's memory; never part of a timed benchmark.

$BREAKWATER_TRACE_DEPTH (default 1) is how many frames tracemalloc keeps per block. With 1, a block
allocated by C code that an event-loop callback runs (uvloop's transports, a coroutine's first frame)
is charged to `loop.run_until_complete`; with more, the growth is also listed by whole traceback, so
the caller shows. Deep tracebacks slow the operator down several times (imports 18x: past the readiness
and acceptance timeouts), so with more than 1 frame tracing starts at the second dump (policies and pods
in place): the first two dumps hold no traces, the third attributes the growth while pods report.

Each dump also counts the live objects the garbage collector tracks, by type (their shallow sizes,
objgraph-style) with their growth since the previous dump, and tells glibc's heap and pymalloc's arenas
(what tracemalloc does not see: OpenSSL's allocations, fragmentation).
"""

from __future__ import annotations

import collections
import ctypes
import gc
import os
import signal
import sys
import tempfile
import tracemalloc
from pathlib import Path
from typing import Any

_previous: list[tracemalloc.Snapshot] = []
_previous_types: list[dict[str, tuple[int, int]]] = []
_TOP = 25
_DEPTH = int(os.environ.get("BREAKWATER_TRACE_DEPTH", "1"))


def _where(frame: tracemalloc.Frame) -> str:
    return f"{frame.filename}:{frame.lineno}"


def _types() -> dict[str, tuple[int, int]]:
    """type name -> (live objects, their summed shallow size), for every object gc tracks."""
    gc.collect()
    counts: collections.Counter[str] = collections.Counter()
    sizes: collections.Counter[str] = collections.Counter()
    for obj in gc.get_objects():
        kind = type(obj)
        name = f"{kind.__module__}.{kind.__qualname__}"
        counts[name] += 1
        sizes[name] += sys.getsizeof(obj)
    return {name: (counts[name], sizes[name]) for name in counts}


def _type_lines(now: dict[str, tuple[int, int]]) -> list[str]:
    lines = []
    if _previous_types:
        before = _previous_types[-1]
        grew = sorted(
            (
                (name, n - before.get(name, (0, 0))[0], s - before.get(name, (0, 0))[1])
                for name, (n, s) in now.items()
            ),
            key=lambda row: -row[2],
        )
        lines.append("## growth of live gc-tracked objects by type (shallow size)")
        lines += [f"{ds / 2**20:+8.2f} MiB {dn:+9d} objects  {name}" for name, dn, ds in grew[:_TOP]]
    total = sum(s for _, s in now.values()) / 2**20
    lines.append(f"## live gc-tracked objects by type (shallow size): {total:.1f} MiB")
    for name, (n, s) in sorted(now.items(), key=lambda row: -row[1][1])[:_TOP]:
        lines.append(f"{s / 2**20:8.2f} MiB {n:9d} objects  {name}")
    _previous_types[:] = [now]
    return lines


def _trace_lines() -> list[str]:
    snapshot = tracemalloc.take_snapshot().filter_traces([tracemalloc.Filter(False, tracemalloc.__file__)])
    lines = []
    if _previous:
        diff = snapshot.compare_to(_previous[-1], "lineno")
        lines.append("## growth since the previous dump, by line")
        for stat in diff[:_TOP]:
            where = _where(stat.traceback[0])
            lines.append(f"{stat.size_diff / 2**20:+8.2f} MiB {stat.count_diff:+9d} blocks  {where}")
        if tracemalloc.get_traceback_limit() > 1:
            lines.append("## growth since the previous dump, by traceback (innermost frame first)")
            for stat in snapshot.compare_to(_previous[-1], "traceback")[:_TOP]:
                lines.append(f"{stat.size_diff / 2**20:+8.2f} MiB {stat.count_diff:+9d} blocks")
                lines += [f"      {_where(f)}" for f in reversed(stat.traceback)]
    _previous[:] = [snapshot]
    for group in ("filename", "lineno"):
        stats = snapshot.statistics(group)
        total = sum(s.size for s in stats)
        lines.append(f"## by {group}: {total / 2**20:.1f} MiB traced in all")
        for stat in stats[:_TOP]:
            lines.append(f"{stat.size / 2**20:8.2f} MiB {stat.count:9d} blocks  {_where(stat.traceback[0])}")
    return lines


class _MallInfo2(ctypes.Structure):
    _fields_ = [
        (name, ctypes.c_size_t)
        for name in (
            *("arena", "ordblks", "smblks", "hblks", "hblkhd"),
            *("usmblks", "fsmblks", "uordblks", "fordblks", "keepcost"),
        )
    ]


def _heap_lines() -> list[str]:
    """Where RSS goes that tracemalloc does not see: glibc's heap (C libraries such as OpenSSL, and
    pymalloc's arenas) and pymalloc's own fragmentation (arenas held by a few live blocks)."""
    lines = ["## heap"]
    try:
        libc = ctypes.CDLL("libc.so.6")
        libc.mallinfo2.restype = _MallInfo2
        info = libc.mallinfo2()
        lines.append(
            f"glibc: {info.arena / 2**20:.1f} MiB in sbrk/arena heaps ({info.uordblks / 2**20:.1f} in use, "
            f"{info.fordblks / 2**20:.1f} free), {info.hblkhd / 2**20:.1f} MiB in {info.hblks} mmapped blocks"
        )
    except (OSError, AttributeError):
        pass
    wanted = ("# arenas allocated current", "# bytes in allocated blocks", "# bytes in available blocks")
    wanted += ("# bytes lost to pool headers", "# bytes lost to quantization", "Total =")
    lines += [line for line in pymalloc_stats() if line.startswith(wanted)]
    return lines


def pymalloc_stats() -> list[str]:
    """The lines of sys._debugmallocstats(), which writes them to the C stderr, stripped."""
    with tempfile.TemporaryFile("w+") as err:
        saved = os.dup(2)
        try:
            os.dup2(err.fileno(), 2)
            sys._debugmallocstats()
        finally:
            os.dup2(saved, 2)
            os.close(saved)
        err.seek(0)
        return [line.strip() for line in err]


_dumps: list[int] = [0]


def _dump(signum: int, frame: Any) -> None:
    _dumps[0] += 1
    if not tracemalloc.is_tracing() and _dumps[0] >= 2:
        tracemalloc.start(_DEPTH)
    lines: list[str] = []
    if tracemalloc.is_tracing():
        lines += _trace_lines()
    lines += _heap_lines()
    lines += _type_lines(_types())
    out = Path(os.environ["BREAKWATER_TRACE_OUT"])
    out.with_suffix(".tmp").write_text("\n".join(lines) + "\n")
    out.with_suffix(".tmp").rename(out)  # whole or not at all for the reader


if __name__ == "__main__":
    if _DEPTH == 1:
        tracemalloc.start(1)
    else:  # what the operator imports lazily, imported before tracing (deep tracing makes imports 18x slower)
        import breakwater.controller.replica  # noqa: F401
    signal.signal(signal.SIGUSR1, _dump)
    from breakwater.cli import main

    sys.exit(main(sys.argv[1:]))
