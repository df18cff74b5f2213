"""`make demo-adaptive`: the tuner moving a policy's thresholds from what its sidecars observe.

The set-up of `make demo` (a local control plane, the operator, real sidecars for kwok pods, a flaky
upstream on loopback, traffic), with a policy whose tuning runs on a short history (2 s buckets, 10 s
of hysteresis) so that a few minutes show what takes hours with the defaults: a noisy upstream (1
call in 10 fails) raises consecutiveFailures, a clean one lowers it again, and each change reaches
every sidecar. Ctrl-C stops everything. All traffic stays on 127.0.0.0/8.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import sys
import time
import urllib.request
from types import FrameType
from typing import Any

from breakwater.testing.demo import DIM, NAMESPACE, RESET, Demo, demo_cluster, keep, run_guarded, say


def policy_manifest(upstream_port: int) -> str:
    return json.dumps(
        {
            "apiVersion": "breakwater.dev/v1alpha1",
            "kind": "CircuitBreakerPolicy",
            "metadata": {"name": "payments", "namespace": NAMESPACE},
            "spec": {
                "selector": {"matchLabels": {"app": "checkout"}},
                "upstreams": [
                    {"name": "payments", "host": "127.0.0.1", "port": upstream_port, "listenPort": 15210}
                ],
                "trip": {"consecutiveFailures": 5, "failureRate": {"percent": 50}},
                "open": {"duration": "5s", "maxDuration": "1m", "jitter": 0},
                "adaptive": {
                    "enabled": True,
                    "historyWindow": "2m",
                    "hysteresis": "10s",
                    "minimumVolume": 200,
                    "pinned": ["OpenDuration"],
                },
            },
        },
        indent=2,
    )


def effective(demo: Demo) -> dict[str, Any]:
    body = json.loads(demo.k("get", "cbp", "payments", "-n", NAMESPACE, "-o", "json"))
    for upstream in (body.get("status") or {}).get("upstreams") or ():
        if upstream["name"] == "payments":
            return dict(upstream.get("effective") or {})
    return {}


def running(demo: Demo) -> list[int]:
    """consecutiveFailures as each sidecar runs it (its GET /config)."""
    values = []
    for sidecar in demo.fleet.sidecars.values():
        with urllib.request.urlopen(sidecar.admin_url + "/config", timeout=5) as resp:
            config = json.load(resp)
        values.append(int(config["upstreams"][0]["breaker"]["consecutiveFailures"]))
    return values


def show(demo: Demo, seconds: float) -> None:
    """Print the tuned thresholds, their source and reason, and what the sidecars run, every 5 s."""
    last = None
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        e = effective(demo)
        line = (
            f"consecutiveFailures {e.get('consecutiveFailures')} "
            f"({(e.get('source') or {}).get('consecutiveFailures', '-')}), "
            f"failureRatePercent {e.get('failureRatePercent')} "
            f"({(e.get('source') or {}).get('failureRatePercent', '-')}); sidecars run {running(demo)}"
        )
        if line != last:
            print(f"   {line}\n   {DIM}{e.get('reason') or ''}{RESET}", flush=True)
            last = line
        time.sleep(5)


def run_adaptive_demo(args: argparse.Namespace) -> int:
    def body() -> int:
        what = "trip after 5 failures in a row or at 50 %, tuned from a 2-minute history"
        with demo_cluster(args, policy_manifest, what) as demo:
            say("Driving traffic (10 calls/s per pod) at a noisy upstream: 1 call in 10 fails")
            demo.upstream.failure_ratio = 0.1
            demo.traffic.start()
            show(demo, args.phase)
            print(demo.k("get", "cbp", "payments", "-n", NAMESPACE, "-o", "wide"))
            say("The upstream becomes clean: the evidence for the looser thresholds ages out of the history")
            demo.upstream.failure_ratio = 0.0
            show(demo, args.phase)
            print(demo.k("get", "cbp", "payments", "-n", NAMESPACE, "-o", "wide"))
            say("The Events of the tuner (kubectl get events --field-selector reason=ThresholdTuned)")
            print(demo.k("get", "events", "-n", NAMESPACE, "--field-selector", "reason=ThresholdTuned"))
            keep(args, demo)
        return 0

    return run_guarded(body)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="make demo-adaptive", description=__doc__.splitlines()[0] if __doc__ else None
    )
    parser.add_argument("--replicas", type=int, default=3, help="client pods (default 3)")
    parser.add_argument("--phase", type=float, default=75.0, help="seconds per phase (default 75)")
    parser.add_argument("--keep", action="store_true", help="keep everything running until Ctrl-C")
    args = parser.parse_args(argv)

    def interrupt(signum: int, frame: FrameType | None) -> None:
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, interrupt)
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    return run_adaptive_demo(args)


if __name__ == "__main__":
    sys.exit(main())
