"""A core's busy time, exactly: what a peer pinned alone to that core really costs it.

A process's user and system times in /proc are sampled at each scheduler tick (250 Hz on this
kernel: `CONFIG_TICK_CPU_ACCOUNTING`), charged whole to whatever runs then; at 1,000 rps a proxy
runs ~50 to 200 µs per request, far shorter than a tick, so those times are a statistical estimate.
A core's idle time is not sampled: with NO_HZ the kernel timestamps every idle entry and exit.
So wall time minus idle is the core's exact busy time, the peer's own work plus the interrupts and
softirqs the core handled for it (and whatever else ran there: keep the core to the peer). Steal
(the hypervisor running another guest while this core wanted to run) is tick-sampled, reported
beside it; subtract it for the core time the work itself used. `cores_check.py` checks all this
against a known duty cycle.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass
from pathlib import Path

__all__ = ["CoreTimes"]

_TICKS = os.sysconf("SC_CLK_TCK")


@dataclass(frozen=True)
class CoreTimes:
    """Seconds so far on one core: wall clock, busy (wall minus idle and iowait), steal."""

    wall: float
    busy: float
    steal: float

    @classmethod
    def now(cls, cpu: int) -> CoreTimes:
        wall = time.monotonic()
        for line in Path("/proc/stat").read_text().splitlines():
            if line.startswith(f"cpu{cpu} "):
                ticks = [int(v) for v in line.split()[1:]]
                idle, iowait, steal = ticks[3], ticks[4], ticks[7]
                return cls(wall, wall - (idle + iowait) / _TICKS, steal / _TICKS)
        raise RuntimeError(f"no cpu{cpu} in /proc/stat")

    def since(self, earlier: CoreTimes) -> CoreTimes:
        return CoreTimes(self.wall - earlier.wall, self.busy - earlier.busy, self.steal - earlier.steal)
