"""Child processes of the test tools (control plane, operator, sidecars): started so that they die
with their parent, stopped gracefully with a deadline, killed past it."""

from __future__ import annotations

import ctypes
import signal
import subprocess
import time
from collections.abc import Iterable

__all__ = ["die_with_parent", "stop", "stop_all"]


def die_with_parent() -> None:
    """`preexec_fn` for `subprocess.Popen`: the child gets SIGKILL when its parent dies, however it
    dies, so nothing outlives an interrupted test run or benchmark (PR_SET_PDEATHSIG)."""
    libc = ctypes.CDLL("libc.so.6", use_errno=True)
    pr_set_pdeathsig = 1
    libc.prctl(pr_set_pdeathsig, signal.SIGKILL)


def stop(process: subprocess.Popen[bytes], *, sig: int = signal.SIGTERM, timeout: float = 15.0) -> None:
    """Send `sig`, wait up to `timeout` seconds, then kill: the process is gone when this returns."""
    stop_all([process], sig=sig, timeout=timeout)


def stop_all(
    processes: Iterable[subprocess.Popen[bytes]], *, sig: int = signal.SIGTERM, timeout: float = 15.0
) -> None:
    """`stop` for several processes at once: all are signalled first, then share one deadline."""
    running = [p for p in processes if p.poll() is None]
    for process in running:
        process.send_signal(sig)
    deadline = time.monotonic() + timeout
    for process in running:
        try:
            process.wait(timeout=max(0.1, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
