"""Does `cores.CoreTimes` see a core's work? A known duty cycle on core 0, measured three ways.

Not a test. Run ``.venv/bin/python bench/proxy/cores_check.py [SPIN_US REST_US ...]`` on an idle
machine: for each pair, a process on core 0 spins SPIN_US then sleeps REST_US, for 8 s. Printed, as
fractions of wall time: the time it spun (the floor: every cycle also costs a sleep and a wakeup),
core 0's busy time less steal, and the process's own user + system time (its run time); then what the
core spent per cycle beyond the spin: the price of one sleep and wakeup on this machine.
"""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from cores import CoreTimes


def duty_cycle(spin_us: float, rest_us: float, seconds: float = 8.0) -> str:
    spin, rest = spin_us * 1e-6, rest_us * 1e-6
    start, core0, times0 = time.monotonic(), CoreTimes.now(0), os.times()
    spun, cycles = 0.0, 0
    while time.monotonic() < start + seconds:
        began = time.perf_counter()
        while time.perf_counter() - began < spin:
            pass
        spun += time.perf_counter() - began
        cycles += 1
        time.sleep(rest)
    core, times1 = CoreTimes.now(0).since(core0), os.times()
    wall = time.monotonic() - start
    ticked = times1.user - times0.user + times1.system - times0.system
    return (
        f"spin {spin_us:.0f} µs, rest {rest_us:.0f} µs: spun {spun / wall:.3f}; "
        f"core busy less steal {(core.busy - core.steal) / core.wall:.3f} "
        f"(steal {core.steal / core.wall:.3f}); "
        f"process times {ticked / wall:.3f}; "
        f"per sleep and wakeup {1e6 * (core.busy - core.steal - spun) / cycles:.1f} µs of core"
    )


def main() -> int:
    os.sched_setaffinity(0, {0})
    pairs = [float(v) for v in sys.argv[1:]] or [100, 400, 50, 950, 200, 200]
    for spin_us, rest_us in zip(pairs[::2], pairs[1::2], strict=True):
        print(duty_cycle(spin_us, rest_us), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
