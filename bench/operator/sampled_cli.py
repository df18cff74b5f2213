"""`breakwater ...` (with the image's packages, `image_packages.py`) and a memory sampler: every
$BREAKWATER_MEMORY_EVERY s (default 10) one JSON line to $BREAKWATER_MEMORY_SAMPLES saying where the
RSS is (no tracing, so timings stay the operator's own).

Each line: seconds since start, RSS split into anonymous and file-backed, glibc's heaps (mallinfo2:
in use, free, mmapped blocks), pymalloc's arenas and the bytes in its allocated blocks
(sys._debugmallocstats), and the threads and file descriptors open. Used by `scale.py --memory-samples`
to find which of them the reports grow.
"""

from __future__ import annotations

import json
import os
import sys
import threading
import time
from pathlib import Path
from typing import Any

from image_packages import block_test_packages
from traced_cli import _MallInfo2, pymalloc_stats

MIB = 2**20


def _status() -> dict[str, float]:
    wanted = {"VmRSS": "rss", "RssAnon": "anon", "RssFile": "file", "Threads": "threads"}
    out: dict[str, float] = {}
    for line in Path("/proc/self/status").read_text().splitlines():
        key, _, value = line.partition(":")
        if key in wanted:
            number = int(value.split()[0])
            out[wanted[key]] = number if key == "Threads" else round(number / 1024, 1)
    return out


def _pymalloc() -> dict[str, float]:
    out: dict[str, float] = {}
    for line in pymalloc_stats():
        label, _, value = line.partition("=")
        number = value.strip().replace(",", "")
        if label.startswith("# arenas allocated current"):
            out["pymalloc_arenas"] = int(number)
        elif label.startswith("# bytes in allocated blocks"):
            out["pymalloc_used"] = round(int(number) / MIB, 1)
    return out


def sample(libc: Any, started: float) -> dict[str, float]:
    info = libc.mallinfo2()
    return {
        "t": round(time.monotonic() - started, 1),
        **_status(),
        "glibc_heap": round(info.arena / MIB, 1),
        "glibc_used": round(info.uordblks / MIB, 1),
        "glibc_free": round(info.fordblks / MIB, 1),
        "glibc_mmapped": round(info.hblkhd / MIB, 1),
        **_pymalloc(),
        "fds": len(os.listdir("/proc/self/fd")),
    }


def _sample_forever(out: Path, every: float) -> None:
    import ctypes

    libc = ctypes.CDLL("libc.so.6")
    libc.mallinfo2.restype = _MallInfo2
    started = time.monotonic()
    with out.open("a") as f:
        while True:
            f.write(json.dumps(sample(libc, started)) + "\n")
            f.flush()
            time.sleep(every)


if __name__ == "__main__":
    target = Path(os.environ["BREAKWATER_MEMORY_SAMPLES"])
    every = float(os.environ.get("BREAKWATER_MEMORY_EVERY", "10"))
    block_test_packages()  # the image's packages (image_packages.py)
    from breakwater.cli import main
    from breakwater.controller import memory

    memory.fewer_malloc_arenas()  # as the operator does before its first thread: this one is first here
    threading.Thread(target=_sample_forever, args=(target, every), daemon=True).start()
    sys.exit(main(sys.argv[1:]))
