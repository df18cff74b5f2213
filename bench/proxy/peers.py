"""The processes of the proxy benchmark: the upstream and each peer proxy, with their configs.

Every process listens on 127.0.0.1 only and is started (and stopped) by the benchmark itself.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

__all__ = [
    "BODY_PATH",
    "BUILDS",
    "Peer",
    "Process",
    "add_build_argument",
    "bare_forwarder",
    "breakwater_config",
    "build_path",
    "compared_on_cpu",
    "missing_tools",
    "process_tree_usage",
    "start_upstream",
]

BODY_PATH = "/1k.bin"
REPO = Path(__file__).resolve().parents[2]
PYTHON = sys.executable

NGINX_COMMON = """
worker_processes 1;
daemon off;
master_process on;
pid {work}/{name}.pid;
error_log {work}/{name}.error.log warn;
events {{ worker_connections 8192; }}
http {{
    access_log off;
    client_body_temp_path {work}/{name}.body;
    proxy_temp_path {work}/{name}.proxy;
    fastcgi_temp_path {work}/{name}.fastcgi;
    uwsgi_temp_path {work}/{name}.uwsgi;
    scgi_temp_path {work}/{name}.scgi;
    keepalive_requests 1000000;
    {body}
}}
"""

UPSTREAM_HTTP = """
    sendfile on;
    open_file_cache max=16;
    server {{
        listen 127.0.0.1:{port} backlog=4096 reuseport;
        root {work}/www;
    }}
"""

NGINX_PROXY_HTTP = """
    upstream up {{
        server 127.0.0.1:{upstream};
        keepalive 128;
        keepalive_requests 1000000;
    }}
    server {{
        listen 127.0.0.1:{port} backlog=4096;
        location / {{
            proxy_pass http://up;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
            proxy_buffering on;
        }}
    }}
"""

HAPROXY = """
global
    nbthread 1
    maxconn 5000
defaults
    mode http
    timeout connect 2s
    timeout client 30s
    timeout server 30s
    option http-keep-alive
    http-reuse always
frontend fe
    bind 127.0.0.1:{port}
    default_backend be
backend be
    server up 127.0.0.1:{upstream}
"""


@dataclass
class Process:
    name: str
    popen: subprocess.Popen[bytes]
    log: Path

    def stop(self) -> None:
        if self.popen.poll() is None:
            self.popen.terminate()
            try:
                self.popen.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.popen.kill()
                self.popen.wait(timeout=10)


@dataclass
class Peer:
    """One thing to measure: `port` is where the load goes; `argv` starts it (None: nothing to start)."""

    name: str
    label: str
    port: int
    argv: list[str] | None = None
    env: dict[str, str] = field(default_factory=dict)

    def start(self, work: Path, cpu: int | None) -> Process | None:
        if self.argv is None:
            return None
        return spawn(self.name, self.argv, work, cpu=cpu, env=self.env, port=self.port)


def spawn(
    name: str, argv: list[str], work: Path, *, cpu: int | None, env: dict[str, str], port: int
) -> Process:
    log = work / f"{name}.log"
    prefix = ["taskset", "-c", str(cpu)] if cpu is not None else []
    with log.open("wb") as out:
        popen = subprocess.Popen(
            [*prefix, *argv], stdout=out, stderr=subprocess.STDOUT, env={**os.environ, **env}, cwd=work
        )
    process = Process(name=name, popen=popen, log=log)
    wait_for_port(port, process)
    return process


def wait_for_port(port: int, process: Process, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.popen.poll() is not None:
            raise RuntimeError(f"{process.name} exited: {process.log.read_text(errors='replace')[-2000:]}")
        with socket.socket() as s:
            s.settimeout(0.2)
            if s.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.05)
    raise RuntimeError(f"{process.name} did not listen on {port} within {timeout}s")


def start_upstream(work: Path, port: int, cpu: int | None) -> Process:
    www = work / "www"
    www.mkdir(exist_ok=True)
    (www / BODY_PATH.lstrip("/")).write_bytes(b"x" * 1024)
    conf = work / "upstream.nginx.conf"
    conf.write_text(
        NGINX_COMMON.format(work=work, name="upstream", body=UPSTREAM_HTTP.format(port=port, work=work))
    )
    return spawn(
        "upstream", ["nginx", "-p", str(work), "-c", str(conf), "-e", str(work / "upstream.error.log")],
        work, cpu=cpu, env={}, port=port,
    )  # fmt: skip


def nginx_proxy(work: Path, port: int, upstream: int) -> Peer:
    conf = work / "proxy.nginx.conf"
    conf.write_text(
        NGINX_COMMON.format(
            work=work, name="proxy", body=NGINX_PROXY_HTTP.format(port=port, upstream=upstream)
        )
    )
    argv = ["nginx", "-p", str(work), "-c", str(conf), "-e", str(work / "proxy.error.log")]
    return Peer("nginx", "nginx 1.22 (proxy_pass, keepalive pool)", port, argv)


def haproxy(work: Path, port: int, upstream: int) -> Peer:
    conf = work / "haproxy.cfg"
    conf.write_text(HAPROXY.format(port=port, upstream=upstream))
    return Peer(
        "haproxy", "HAProxy 2.6 (1 thread, http-reuse always)", port, ["haproxy", "-db", "-f", str(conf)]
    )


def plain_aiohttp(port: int, upstream: int) -> Peer:
    script = str(REPO / "bench" / "proxy" / "plain_aiohttp.py")
    argv = [PYTHON, script, "--listen", str(port), "--upstream", f"127.0.0.1:{upstream}", "--uvloop"]
    return Peer("aiohttp", "plain aiohttp proxy (uvloop, no features)", port, argv)


def bare_forwarder(port: int, upstream: int) -> Peer:
    script = str(REPO / "bench" / "proxy" / "bare_forwarder.py")
    argv = [PYTHON, script, "--listen", str(port), "--upstream", f"127.0.0.1:{upstream}"]
    return Peer("bare", "bare Python forwarder (uvloop + httptools, no features: the floor)", port, argv)


def breakwater_config(*, port: int, upstream: int, admin: int, forward: int) -> dict[str, object]:
    """Every feature on: all three trip rules on a time window, Cached fallback (every 200 is teed into
    the cache), bulkhead with a queue, retries with a budget, forward proxy, admin/metrics, file watch."""
    return {
        "configHash": "bench-all-features",
        "admin": {"port": admin, "address": "127.0.0.1"},
        "forwardProxy": {"enabled": True, "port": forward, "unknownHosts": "PassThrough"},
        "upstreams": [
            {
                "name": "bench",
                "policy": "bench/bench",
                "host": "127.0.0.1",
                "port": upstream,
                "listenPort": port,
                "mode": "Enforce",
                "breaker": {
                    "consecutiveFailures": 5,
                    "failureRatePercent": 50,
                    "slowCallPercent": 80,
                    "slowCallSeconds": 1.0,
                    "minimumCalls": 20,
                    "windowKind": "Time",
                    "windowSeconds": 30,
                    "openSeconds": 30,
                },
                "failures": {"statusCodes": ["5xx", "429"]},
                "timeoutSeconds": 2.0,
                "fallback": {"kind": "Cached", "maxAgeSeconds": 300},
                "bulkhead": {"maxConcurrent": 1000, "maxPending": 100},
                "retry": {"attempts": 2, "budgetPercent": 20, "retryOn": ["connect-failure", "reset", "5xx"]},
            }
        ],
    }


SIDECARS = ("breakwater", "breakwater-compiled")
"""The sidecar's two builds: its sources interpreted (an editable install) and its hot path compiled by
mypyc (the image's build, `hack/build-compiled.sh`)."""


def compiled_build() -> Path:
    """The compiled build's directory (cached; built once in about 30 s), for PYTHONPATH."""
    out = subprocess.run(
        ["bash", str(REPO / "hack" / "build-compiled.sh")], stdout=subprocess.PIPE, text=True, check=True
    )
    return Path(out.stdout.strip().splitlines()[-1])


BUILDS = ("compiled", "interpreted")
"""The `--build` choices: the hot path compiled by mypyc as the image runs it, or the sources interpreted."""


def add_build_argument(parser: argparse.ArgumentParser, *, default: str = "compiled", note: str = "") -> None:
    """The `--build` option of the scripts that measure one build of the sidecar at a time."""
    text = "compiled: the hot path compiled by mypyc, as the image runs it; interpreted: the sources as is"
    parser.add_argument("--build", choices=BUILDS, default=default, help=f"{text}{note} (default {default})")


def build_path(build: str) -> Path | None:
    """What PYTHONPATH needs for `build` (`BUILDS`): the compiled build's directory, or None."""
    return compiled_build() if build == "compiled" else None


def breakwater(
    work: Path, port: int, upstream: int, admin: int, forward: int, *, compiled: Path | None = None
) -> Peer:
    conf = work / "sidecar.json"
    conf.write_text(json.dumps(breakwater_config(port=port, upstream=upstream, admin=admin, forward=forward)))
    argv = [PYTHON, "-m", "breakwater.cli", "proxy", "--config", str(conf), "--log-level", "WARNING"]
    if compiled is None:
        return Peer("breakwater", "Breakwater sidecar (uvloop, every feature on), interpreted", port, argv)
    label = "Breakwater sidecar (uvloop, every feature on), hot path compiled by mypyc as in the image"
    return Peer("breakwater-compiled", label, port, argv, env={"PYTHONPATH": str(compiled)})


def compared_on_cpu(
    work: Path, port: int, upstream: int, admin: int, forward: int
) -> dict[str, Callable[[], Peer]]:
    """The peers the CPU benchmarks compare (HAProxy, the floor of a Python forwarder, the sidecar in
    both builds), each made when its turn comes."""
    compiled = compiled_build()
    return {
        "haproxy": lambda: haproxy(work, port, upstream),
        "bare": lambda: bare_forwarder(port, upstream),
        "breakwater": lambda: breakwater(work, port, upstream, admin, forward),
        "breakwater-compiled": lambda: breakwater(work, port, upstream, admin, forward, compiled=compiled),
    }


def missing_tools(*tools: str) -> str | None:
    """A line saying which of `tools` are not installed and how to get them, or None."""
    missing = [tool for tool in tools if shutil.which(tool) is None]
    if not missing:
        return None
    debian = {"taskset": "util-linux"}
    packages = " ".join(sorted({debian.get(tool, tool) for tool in missing}))
    return f"missing {', '.join(missing)}: apt-get install {packages} (bash bench/run_proxy.sh does)"


def process_tree_usage(root_pid: int) -> tuple[float, int]:
    """(CPU seconds used, RSS bytes) of `root_pid` and its descendants, from /proc."""
    ticks = os.sysconf("SC_CLK_TCK")
    page = os.sysconf("SC_PAGE_SIZE")
    parents: dict[int, int] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            stat = Path(f"/proc/{entry}/stat").read_text()
        except OSError:
            continue
        fields = stat[stat.rindex(")") + 2 :].split()
        parents[int(entry)] = int(fields[1])
    tree = {root_pid}
    changed = True
    while changed:
        changed = False
        for pid, ppid in parents.items():
            if ppid in tree and pid not in tree:
                tree.add(pid)
                changed = True
    cpu = 0.0
    rss = 0
    for pid in tree:
        try:
            stat = Path(f"/proc/{pid}/stat").read_text()
            statm = Path(f"/proc/{pid}/statm").read_text().split()
        except OSError:
            continue
        fields = stat[stat.rindex(")") + 2 :].split()
        cpu += (int(fields[11]) + int(fields[12])) / ticks
        rss += int(statm[1]) * page
    return cpu, rss
