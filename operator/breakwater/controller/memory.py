"""Give freed heap back to the system now and then.

Bursts (the first list of every pod, a storm of reports, a rollout's session requests) grow glibc's heap,
and glibc returns freed memory at the top of the heap only. `malloc_trim(0)` releases free pages
anywhere in it, so the operator's RSS follows what it holds rather than its worst minute.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import logging

logger = logging.getLogger(__name__)

M_ARENA_MAX = -8  # glibc's mallopt parameter number


def _libc() -> ctypes.CDLL | None:
    try:
        return ctypes.CDLL("libc.so.6")
    except OSError:  # not glibc (musl, macOS): nothing to tune
        return None


def fewer_malloc_arenas() -> None:
    """glibc gives each thread that allocates its own malloc arena (up to 8 per core), and the API calls
    that run in worker threads would each keep one mostly empty: cap them at two, as MALLOC_ARENA_MAX=2
    would. Call before any thread starts."""
    libc = _libc()
    if libc is not None:
        with contextlib.suppress(AttributeError):
            libc.mallopt(M_ARENA_MAX, 2)


async def trim_forever(every: float = 30.0) -> None:
    libc = _libc()
    trim = getattr(libc, "malloc_trim", None) if libc is not None else None
    if trim is None:
        return
    while True:
        await asyncio.sleep(every)
        trim(0)
