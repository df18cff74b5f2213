"""Where the sidecar's hot path spends its time at saturation: a py-spy profile, summarised.

Not a test. Run ``.venv/bin/python bench/proxy_profile.py`` (needs nginx, wrk and py-spy; ~30 s). All
traffic stays on 127.0.0.1: nginx (a static 1 KiB file) and wrk (1 thread, 64 connections) on core 1,
the sidecar (every feature on, the policy of `bench/proxy/peers.py`) on core 0. py-spy samples the
sidecar with native frames while wrk saturates it. Writes ``bench/results/proxy-profile.md`` (self
time by frame and by kind: syscalls, the event loop, the parser, Breakwater's Python code).
"""

from __future__ import annotations

import argparse
import collections
import os
import shlex
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from proxy import peers as peer_defs
from proxy_bench import run_wrk

REPO = Path(__file__).resolve().parents[1]
UPSTREAM_PORT, BW_PORT, BW_FORWARD_PORT, BW_ADMIN_PORT = 18380, 18384, 18385, 18390
SYSCALLS = ("epoll_wait", "epoll_pwait", "writev", "write", "read", "recv", "send", "sendmsg", "recvmsg")


def kind_of(frame: str) -> str:
    name = frame.split(" ", 1)[0]
    if name in SYSCALLS:
        return "system calls (socket reads/writes, epoll)"
    if "breakwater/" in frame:
        return "Breakwater's Python code (proxy, breaker, counters)"
    if "parser.c" in frame or "httptools" in frame or "llhttp" in frame:
        return "httptools / llhttp"
    if "loop.c" in frame or "uvloop" in frame or "libuv" in frame or "uv_" in frame:
        return "uvloop / libuv"
    return "CPython runtime (refcounts, allocator, GC, calls)"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--seconds", type=float, default=15.0)
    parser.add_argument("--out", type=Path, default=REPO / "bench" / "results")
    args = parser.parse_args()
    spy = shutil.which("py-spy") or str(Path(sys.executable).parent / "py-spy")
    os.sched_setaffinity(0, {1})
    work = Path(tempfile.mkdtemp(prefix="bw-proxy-profile-"))
    work.chmod(0o755)
    raw = work / "profile.txt"
    upstream = peer_defs.start_upstream(work, UPSTREAM_PORT, cpu=1)
    sidecar = peer_defs.breakwater(work, BW_PORT, UPSTREAM_PORT, BW_ADMIN_PORT, BW_FORWARD_PORT)
    process = sidecar.start(work, cpu=0)
    assert process is not None
    result: dict[str, object] = {}
    try:
        run_wrk(BW_PORT, 2)
        load = threading.Thread(target=lambda: result.update(run_wrk(BW_PORT, args.seconds + 4)))
        load.start()
        time.sleep(2)
        argv = [spy, "record", "--pid", str(process.popen.pid), "--native", "--rate", "200"]
        argv += ["--duration", str(round(args.seconds)), "--format", "raw", "--output", str(raw)]
        subprocess.run(argv, check=True, capture_output=True, timeout=args.seconds + 60)
        load.join()
    finally:
        process.stop()
        upstream.stop()
    by_frame: collections.Counter[str] = collections.Counter()
    by_kind: collections.Counter[str] = collections.Counter()
    total = 0
    for line in raw.read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        leaf = stack.split(";")[-1]
        total += int(count)
        by_frame[leaf] += int(count)
        by_kind[kind_of(leaf)] += int(count)
    shutil.rmtree(work, ignore_errors=True)
    command = shlex.join([sys.executable.rsplit("/", 1)[-1], *sys.argv])
    lines = [
        "# Where the sidecar's hot path spends its time (py-spy, at saturation)",
        "",
        f"Recorded {time.strftime('%Y-%m-%d %H:%M:%S %Z')} by `{command}`; load average "
        f"{Path('/proc/loadavg').read_text().split()[:3]}. wrk meanwhile: {result.get('rps', 0):,.0f} rps "
        f"(py-spy's sampling costs some). {total} samples, self time of the innermost frame "
        "(native frames on).",
        "",
        "| kind | share |",
        "| --- | ---: |",
        *(f"| {k} | {100 * n / total:.1f} % |" for k, n in by_kind.most_common()),
        "",
        "| frame (self) | share |",
        "| --- | ---: |",
        *(f"| `{f}` | {100 * n / total:.1f} % |" for f, n in by_frame.most_common(30)),
        "",
    ]
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "proxy-profile.md").write_text("\n".join(lines))
    print("\n".join(lines[:20]))
    return 0


if __name__ == "__main__":
    sys.exit(main())
