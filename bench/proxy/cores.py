"""A core's busy time: what a peer pinned alone to that core costs it, its wakeups included.

A process's user + system time in /proc is its scheduler run time (only the split between the two
is sampled, at each 250 Hz tick). It leaves out what the core does for the process outside its own
context: the interrupt and idle exit of each wakeup, charged to the idle task, a large part of a
request at 1,000 rps on a VM. A core's idle time is timestamped at every idle entry and exit (NO_HZ),
so wall minus idle and iowait is the core's busy time: the peer's work and its wakeups (and whatever
else ran there: keep the core to the peer). /proc/stat counts in 1/100 s, so each reading is up to
10 ms short: about ±2 µs per request over 10 s at 1,000 rps.

Steal (the hypervisor running another guest while this core wanted to run) is subtracted for the
core time the work itself used. The kernel reads it from the hypervisor and adds it up at ticks and
idle exits; a woken vCPU that waits for the host is idle to the guest and stolen to the host at once,
so with much steal the difference undercounts: rounds with steal above ~5 % of the core are the
least reliable. `cores_check.py` checks the busy time against a known duty cycle.
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
