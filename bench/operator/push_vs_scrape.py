"""Push or scrape, measured at 100 and 1,000 sidecars.

Push (what Breakwater does): the real operator's report channel receives simulated sidecars' signed
report datagrams, each sidecar holding a session opened over HTTPS with the real pod-bound token of a
real kwok pod: a summary every 5 s per pod, and a transition report at once whenever a breaker flips.
`--flips` pods per second flip state. Measured: the operator's CPU over the window minus its CPU with
the same policies and pods but no reports, transition -> operator latency (from the transition to the
operator's answer datagram, which it sends after storing the report), TokenReviews per second at the
API server (one per session), status PATCHes per second.

Scrape (the alternative): a minimal poller written here, not in the operator. A separate "farm"
process serves `/stats` (the real document's shape, one upstream) on N pod-like addresses
(127.40.x.y, on the sidecar's admin port), flipping `--flips` breakers per second and stamping
`stateSince` with the wall time of the flip. The scraper GETs every target every `--intervals`
seconds (spread evenly), parses
the document into the same pydantic `SidecarReport` the push path validates, and records the delay
from `stateSince` to the scrape that first saw the new state. Variants: plain HTTP (no
authentication at all: a lower bound) and mutual TLS (the scraper presents a client certificate, the
farm one serving certificate; what authenticating a scrape would take at minimum).

    .venv/bin/python bench/operator/push_vs_scrape.py --sizes 100,1000 --intervals 1,5 --window 45
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import ipaddress
import json
import os
import random
import ssl
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import aiohttp
import opbench as ob
from aiohttp import web

from breakwater import pki
from breakwater.api.constants import SIDECAR_ADMIN_PORT
from breakwater.api.report import SidecarReport, UpstreamReport

FARM_BASE = ipaddress.ip_address("127.40.0.10")
ADMIN_PORT = SIDECAR_ADMIN_PORT


def farm_ips(n: int) -> list[str]:
    return [str(FARM_BASE + i) for i in range(n)]


# -- the farm: N simulated sidecar admin endpoints -------------------------------------------------------


def stats_doc(ip: str, state: str, since: float, calls: int) -> dict[str, Any]:
    """The shape of the real sidecar's /stats (proxy/admin.py stats_document) with one upstream."""
    return {
        "ready": True,
        "configHash": "5f0c3a9e1b2d4c6f",
        "generation": 3,
        "lastReload": {"at": since, "ok": True, "source": "operator"},
        "lastReloadError": None,
        "startedAt": since - 3600,
        "uptimeSeconds": 3600.0,
        "clock": time.monotonic(),
        "listeners": {"admin": ADMIN_PORT, "forwardProxy": None},
        "clientConnections": 3,
        "forwardProxy": None,
        "pod": {"ip": ip},
        "upstreams": {
            "payments": {
                "policy": "bench/payments",
                "host": "payments.shop.svc.cluster.local",
                "port": 8080,
                "listenPort": 15210,
                "mode": "Enforce",
                "state": state,
                "stateSince": since,
                "retryAfterSeconds": None,
                "breaker": {
                    "calls": calls,
                    "failures": calls // 20,
                    "slowCalls": 0,
                    "ignored": 0,
                    "rejections": 0,
                    "wouldReject": 0,
                    "trips": 1,
                    "consecutiveFailures": 0,
                    "trialsInFlight": 0,
                    "openStreak": 0,
                },
                "window": {"calls": 50, "failureRate": random.randint(0, 5) / 50, "slowRate": 0.0},
                "requests": {"success": calls, "failure": calls // 20, "rejected": 0, "fallback": 0},
                "retries": 0,
                "fallbacks": {"static": 0, "cached": 0},
                "inFlight": 1,
                "lastTransitions": [],
            }
        },
    }


async def farm_main(n: int, flips: float, tls_dir: str, lifetime: float) -> None:
    states = {ip: ["Closed", time.time() - 60, 0] for ip in farm_ips(n)}

    async def stats(request: web.Request) -> web.Response:
        ip = request.transport.get_extra_info("sockname")[0] if request.transport else ""
        st = states[ip]
        st[2] += 10
        return web.Response(
            text=json.dumps(stats_doc(ip, st[0], st[1], st[2])), content_type="application/json"
        )

    app = web.Application()
    app.router.add_get("/stats", stats)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    ctx = None
    if tls_dir:
        ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH, cafile=f"{tls_dir}/ca.crt")
        ctx.load_cert_chain(f"{tls_dir}/farm.crt", f"{tls_dir}/farm.key")
        ctx.verify_mode = ssl.CERT_REQUIRED  # mutual TLS: only the scraper's client certificate gets in
    for ip in states:
        await web.TCPSite(runner, ip, ADMIN_PORT, ssl_context=ctx, backlog=256).start()
    print("ready", flush=True)
    ips = list(states)
    deadline = time.monotonic() + lifetime
    parent = os.getppid()
    while time.monotonic() < deadline and os.getppid() == parent:  # the parent kills us sooner
        await asyncio.sleep(1 / flips)
        ip = random.choice(ips)
        st = states[ip]
        st[0] = "Open" if st[0] == "Closed" else "Closed"
        st[1] = time.time()


# -- the scraper: the minimal poller the operator would need --------------------------------------------


async def scraper_main(n: int, interval: float, window: float, tls_dir: str, out: str) -> None:
    ctx: ssl.SSLContext | bool = False
    scheme = "http"
    if tls_dir:
        c = ssl.create_default_context(cafile=f"{tls_dir}/ca.crt")
        c.load_cert_chain(f"{tls_dir}/scraper.crt", f"{tls_dir}/scraper.key")
        c.check_hostname = False  # one serving certificate for the whole farm
        ctx, scheme = c, "https"
    session = aiohttp.ClientSession(
        connector=aiohttp.TCPConnector(ssl=ctx, limit=0), timeout=aiohttp.ClientTimeout(total=10)
    )
    last: dict[str, str] = {}
    latencies: list[float] = []
    errors = 0
    scrapes = 0
    started = time.monotonic()
    measuring_from = started + min(10.0, window / 4)  # connections up, first states known

    async def one(ip: str, offset: float) -> None:
        nonlocal errors, scrapes
        await asyncio.sleep(offset)
        url = f"{scheme}://{ip}:{ADMIN_PORT}/stats"
        tick = time.monotonic()
        while time.monotonic() - started < window:
            try:
                async with session.get(url) as resp:
                    doc = await resp.json()
                seen_at = time.time()
                ups = [
                    UpstreamReport(
                        name=name,
                        policy=u["policy"],
                        state=u["state"],
                        mode=u["mode"],
                        calls=u["breaker"]["calls"],
                        failures=u["breaker"]["failures"],
                        rejections=u["breaker"]["rejections"],
                        trips=u["breaker"]["trips"],
                        window_calls=u["window"]["calls"],
                        failure_rate=u["window"]["failureRate"],
                        slow_rate=u["window"]["slowRate"],
                        state_since=u["stateSince"],
                    )
                    for name, u in doc["upstreams"].items()
                ]
                report = SidecarReport(
                    namespace="bench", pod=ip, config_hash=doc["configHash"], upstreams=ups
                )
                scrapes += 1
                state = report.upstreams[0].state
                if ip in last and state != last[ip] and time.monotonic() > measuring_from:
                    latencies.append(seen_at - float(report.upstreams[0].state_since or seen_at))
                last[ip] = state
            except (aiohttp.ClientError, TimeoutError, OSError):
                errors += 1
            tick += interval
            await asyncio.sleep(max(0.0, tick - time.monotonic()))

    ips = farm_ips(n)
    pid = os.getpid()
    cpu0 = ob.cpu_seconds(pid)
    tasks = [asyncio.create_task(one(ip, interval * i / n)) for i, ip in enumerate(ips)]
    # CPU is measured over the steady part of the window, after connections are up.
    await asyncio.sleep(measuring_from - time.monotonic())
    cpu_a, wall_a, scrapes_a = ob.cpu_seconds(pid), time.monotonic(), scrapes
    await asyncio.gather(*tasks)
    cpu_b, wall_b = ob.cpu_seconds(pid), time.monotonic()
    await session.close()
    Path(out).write_text(  # noqa: ASYNC240 - once, after the measurement window
        json.dumps(
            {
                "cpu_percent": round(100 * (cpu_b - cpu_a) / (wall_b - wall_a), 1),
                "cpu_total_seconds": round(cpu_b - cpu0, 2),
                "scrapes_per_second": round((scrapes - scrapes_a) / (wall_b - wall_a), 1),
                "errors": errors,
                "latencies": latencies,
                "rss_mib": round(ob.memory_mib(pid)[0], 1),
            }
        )
    )


def write_tls(directory: Path) -> None:
    ca = pki.CertificateAuthority("breakwater-bench-scrape-ca")
    (directory / "ca.crt").write_bytes(ca.cert_pem)
    ca.issue("sidecar", ips=("127.40.0.10",), server=True).write(directory, "farm")
    ca.issue("breakwater-operator", client=True).write(directory, "scraper")


def run_scrape(n: int, interval: float, window: float, flips: float, tls: bool) -> dict[str, Any]:
    tmp = Path(tempfile.mkdtemp(prefix="breakwater-scrape-"))
    tls_dir = ""
    if tls:
        write_tls(tmp)
        tls_dir = str(tmp)
    me = [sys.executable, __file__]
    farm = subprocess.Popen(
        [*me, "--farm", str(n), "--flips", str(flips), "--tls-dir", tls_dir, "--window", str(window)],
        stdout=subprocess.PIPE,
        text=True,
    )
    scraper: subprocess.Popen[bytes] | None = None
    try:
        assert farm.stdout is not None
        if farm.stdout.readline().strip() != "ready":
            raise RuntimeError("the farm did not start")
        farm_cpu = ob.CpuWindow(farm.pid).start()
        out = tmp / "scraper.json"
        scraper = subprocess.Popen(
            [*me, "--scraper", str(n), "--interval", str(interval), "--window", str(window),
             "--tls-dir", tls_dir, "--out", str(out)],
        )  # fmt: skip
        scraper.wait(timeout=window + 60)
        farm_cpu.stop()
        got = json.loads(out.read_text())
    finally:
        for proc in (scraper, farm):
            if proc is not None and proc.poll() is None:
                proc.kill()
                proc.wait()
        import shutil

        shutil.rmtree(tmp, ignore_errors=True)
    lat = got.pop("latencies")
    result = {
        "mode": "scrape",
        "sidecars": n,
        "interval_seconds": interval,
        "auth": "mutual TLS" if tls else "none (plain HTTP)",
        "transition_to_operator_seconds": ob.summary(lat),
        "operator_side_cpu_percent": got["cpu_percent"],
        "farm_cpu_percent": farm_cpu.percent,
        "requests_per_second": got["scrapes_per_second"],
        "tokenreviews_per_second": 0.0,
        "errors": got["errors"],
        "operator_side_rss_mib": got["rss_mib"],
    }
    ob.log(f"scrape {n} every {interval:g} s ({result['auth']}): {result}")
    return result


# -- push: the real operator ------------------------------------------------------------------------------


async def push(args: argparse.Namespace) -> list[dict[str, Any]]:
    results = []
    bench = ob.Bench.start(big=True)
    try:
        api = ob.Api(bench.cp)
        fleet = ob.SimFleet(bench.operator.report_url, bench.operator.ca_pem(), [], interval=5.0)
        try:
            made = 0
            for n in sorted(args.sizes):
                namespaces = max(1, n // 100)
                for i in range(made, namespaces):
                    ns = f"push-{i:02d}"
                    await api.namespace(ns)
                    await api.wait_service_account(ns)
                    await ob.create_policy(api, ns, ob.policy_body("payments", app="checkout"))
                    await api.post(
                        f"/apis/apps/v1/namespaces/{ns}/deployments",
                        ob.deployment_body(
                            "checkout", app="checkout", node=bench.cp.node_name, replicas=min(n, 100)
                        ),
                    )
                for i in range(made, namespaces):
                    await ob.wait_pods(api, f"push-{i:02d}", min(n, 100), interval=1)
                sims = []
                for i in range(made, namespaces):
                    ns = f"push-{i:02d}"
                    sims += await ob.sim_pods_for(api, ns, policy_of={"checkout": f"{ns}/payments"})
                made = namespaces
                await asyncio.sleep(5)
                # The operator with these policies and pods, before the new pods report.
                idle = ob.CpuWindow(bench.operator.pid).start()
                await asyncio.sleep(args.window / 3)
                idle.stop()
                fleet.pods.extend(sims)
                fleet.start(sims)
                # Past every new pod's session request (one TokenReview each), so the window shows the
                # steady state: datagrams only.
                await asyncio.sleep(args.push_warmup)
                m0 = ob.request_counts(ob.parse_metrics(await api.metrics_text()))
                fleet.post_latencies.clear()
                fleet.transition_latencies.clear()
                cpu = ob.CpuWindow(bench.operator.pid).start()
                sent0 = fleet.sent
                started = time.monotonic()
                while time.monotonic() - started < args.push_window:
                    await asyncio.sleep(1 / args.flips)
                    pod = random.choice(fleet.pods)
                    pod.transition("Open" if pod.state == "Closed" else "Closed")
                    fleet.kick(pod)
                cpu.stop()
                m1 = ob.request_counts(ob.parse_metrics(await api.metrics_text()))
                wall = cpu.wall
                result = {
                    "mode": "push",
                    "sidecars": len(fleet.pods),
                    "interval_seconds": 5.0,
                    "auth": "HMAC-signed datagrams; session over TLS per token (TokenReview)",
                    "transition_to_operator_seconds": ob.summary(fleet.transition_latencies),
                    "operator_side_cpu_percent": round(cpu.percent - idle.percent, 1),
                    "operator_cpu_percent_total": cpu.percent,
                    "operator_cpu_percent_without_reports": idle.percent,
                    "requests_per_second": round((fleet.sent - sent0) / wall, 1),
                    "tokenreviews_per_second": round((m1["tokenreviews"] - m0["tokenreviews"]) / wall, 2),
                    "status_patches_per_second": round(
                        (m1["status_patches"] - m0["status_patches"]) / wall, 2
                    ),
                    "errors": sum(fleet.errors.values()),
                    "operator_side_rss_mib": round(ob.memory_mib(bench.operator.pid)[0], 1),
                    "report_rtt_ms": ob.summary(fleet.post_latencies, scale=1000, digits=1),
                }
                ob.log(f"push {n}: {result}")
                results.append(result)
        finally:
            await fleet.stop()
            await api.close()
    finally:
        bench.close()
    return results


def render(args: argparse.Namespace, machine: dict[str, Any], results: list[dict[str, Any]]) -> None:
    rows = []
    for r in results:
        lat = r["transition_to_operator_seconds"]
        rows.append([
            r["mode"], r["sidecars"], f"{r['interval_seconds']:g} s", r["auth"], r["requests_per_second"],
            f"{r['operator_side_cpu_percent']}%", lat["p50"], lat["p95"], lat["max"],
            r["tokenreviews_per_second"], r["errors"],
        ])  # fmt: skip
    columns = [
        "mode", "sidecars", "interval", "authentication", "requests/s", "operator-side CPU",
        "transition → operator p50 s", "p95 s", "max s", "TokenReviews/s", "errors",
    ]  # fmt: skip
    body = f"""
{args.flips:g} breakers flip per second in every configuration; window {args.window:g} s per scrape row, and
{args.push_window:g} s per push row, starting {args.push_warmup:g} s after the pods began to report (past
their session requests).
"operator-side CPU" is, for push, the operator's CPU over the window minus its CPU with the same
policies and pods but no reports; for scrape, the scraper process's CPU (it does nothing else). 100 % =
one core of the 2. Transition → operator: push, from the transition to the operator's answer datagram
(sent after it stored the report); scrape, from the flip (`stateSince`) to the scrape that saw it.

{ob.md_table(columns, rows)}

Push rows also record the report round-trip and the status writes in the JSON. The farm (the
simulated sidecars' side of scraping) is not operator cost and is in the JSON as `farm_cpu_percent`.
"""
    ob.write_results(
        "operator-push-vs-scrape", title="Push or scrape, measured", machine=machine, body_md=body,
        data={"results": results, "args": vars(args)},
    )  # fmt: skip


async def main(args: argparse.Namespace) -> None:
    machine = ob.machine_facts()
    results = await push(args) if not args.scrape_only else []
    for n in args.sizes:
        for interval in args.intervals:
            for tls in (False, True):
                results.append(await asyncio.to_thread(run_scrape, n, interval, args.window, args.flips, tls))
    render(args, machine, results)


def floats(text: str) -> list[float]:
    return [float(x) for x in text.split(",") if x]


if __name__ == "__main__":
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--sizes", type=lambda t: [int(x) for x in floats(t)], default=[100, 1000])
    parser.add_argument("--intervals", type=floats, default=[1.0, 5.0])
    parser.add_argument("--window", type=float, default=45.0)
    parser.add_argument(
        "--push-warmup", type=float, default=50.0, help="seconds of reports before the window"
    )
    parser.add_argument("--push-window", type=float, default=70.0)
    parser.add_argument("--flips", type=float, default=2.0, help="breaker transitions per second, fleet-wide")
    parser.add_argument("--scrape-only", action="store_true")
    # internal: the two child processes of the scrape measurement
    parser.add_argument("--farm", type=int, default=0, help=argparse.SUPPRESS)
    parser.add_argument("--scraper", type=int, default=0, help=argparse.SUPPRESS)
    parser.add_argument("--interval", type=float, default=1.0, help=argparse.SUPPRESS)
    parser.add_argument("--tls-dir", default="", help=argparse.SUPPRESS)
    parser.add_argument("--out", default="", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.farm:
        with contextlib.suppress(KeyboardInterrupt):
            asyncio.run(farm_main(args.farm, args.flips, args.tls_dir, args.window + 120))
    elif args.scraper:
        asyncio.run(scraper_main(args.scraper, args.interval, args.window, args.tls_dir, args.out))
    else:
        asyncio.run(main(args))
