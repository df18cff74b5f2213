"""`make bench`: every benchmark, one after the other, each writing its results under bench/results/.

    .venv/bin/python bench/run_all.py                 # all of them (tens of minutes on 2 cores)
    .venv/bin/python bench/run_all.py --only breaker  # one group: breaker, proxy, operator

Each script starts what it measures (control planes, servers, peers) on 127.0.0.1 and stops it; the
proxy group installs HAProxy, nginx and wrk from Debian's packages when they are missing.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import time
from pathlib import Path

BENCH = Path(__file__).resolve().parent
PYTHON = sys.executable

GROUPS: dict[str, list[list[str]]] = {
    "breaker": [[PYTHON, str(BENCH / "breaker_bench.py")]],
    "proxy": [["bash", str(BENCH / "run_proxy.sh")]],
    "operator": [
        [PYTHON, str(BENCH / "operator" / name)]
        for name in (
            "admission.py",
            "status_latency.py",
            "config_propagation.py",
            "push_vs_scrape.py",
            "scale.py",
        )
    ],
    # Root: a real node (containerd + kubelet in a network namespace of its own).
    "node": [[PYTHON, str(BENCH / "node" / "node_bench.py")]],
}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--only", choices=sorted(GROUPS), action="append", help="run only this group")
    args = parser.parse_args()
    failed = []
    subprocess.run([PYTHON, "-m", "pip", "install", "-q", "-r", str(BENCH / "requirements.txt")], check=True)
    for group in args.only or list(GROUPS):
        for command in GROUPS[group]:
            started = time.monotonic()
            print(f"\n=== {group}: {' '.join(Path(c).name for c in command)}", flush=True)
            if subprocess.run(command, check=False).returncode != 0:
                failed.append(" ".join(command))
            print(f"=== took {time.monotonic() - started:.0f} s", flush=True)
    if failed:
        print("\nfailed:\n  " + "\n  ".join(failed), file=sys.stderr)
        return 1
    print("\nresults: bench/results/")
    return 0


if __name__ == "__main__":
    sys.exit(main())
