"""Helpers of the adaptive and quorum suites: the policy, a sidecar's breaker and config, the status of
the upstream, Events by reason, and steady traffic through every sidecar."""

from __future__ import annotations

import json
import threading
import time
import urllib.request
from typing import Any

from breakwater.testing.sidecars import SidecarProcess
from tests.cluster.harness import call, policy
from tests.conftest import Cluster

# A noisy upstream for the tests that wait for consecutiveFailures to be tuned above the spec's 5: 1
# call in 5 fails. At 1 in 10, about 1 window in 8 of 1-s buckets of ~18 calls does not rule 5 out
# (the tuner then keeps it: tuner.CHANCE_RUNS_DEVIATIONS), and waiting for the others took up to 95 s.
NOISY_FAILURE_RATIO = 0.2

# A short history so the test sees the tuner act within seconds: 2 s buckets, 5 s of hysteresis.
FAST_ADAPTIVE = {
    "enabled": True,
    "historyWindow": "2m",
    "hysteresis": "5s",
    "minimumVolume": 50,
    "pinned": ["OpenDuration"],
}


def manifest(port: int, **spec: Any) -> str:
    body = {
        "apiVersion": "breakwater.dev/v1alpha1",
        "kind": "CircuitBreakerPolicy",
        "metadata": {"name": "payments"},
        "spec": {
            "selector": {"matchLabels": {"app": "checkout"}},
            "upstreams": [{"name": "payments", "host": "127.0.0.1", "port": port, "listenPort": 15210}],
            "trip": {"consecutiveFailures": 5},
            "open": {"duration": "3s", "maxDuration": "5m", "jitter": 0},
            "halfOpen": {"permittedCalls": 1, "successesToClose": 1},
            **spec,
        },
    }
    return json.dumps(body)


def get_json(url: str) -> dict[str, Any]:
    with urllib.request.urlopen(url, timeout=5) as resp:
        return dict(json.load(resp))


def breaker_of(sidecar: SidecarProcess) -> dict[str, Any]:
    return dict(get_json(sidecar.admin_url + "/stats")["upstreams"]["payments"])


def running_threshold(sidecar: SidecarProcess) -> int:
    config = get_json(sidecar.admin_url + "/config")
    return int(
        next(u for u in config["upstreams"] if u["name"] == "payments")["breaker"]["consecutiveFailures"]
    )


def upstream_status(cluster: Cluster, namespace: str) -> dict[str, Any]:
    for up in (policy(cluster, namespace, "payments").get("status") or {}).get("upstreams") or ():
        if up["name"] == "payments":
            return dict(up)
    return {}


class Traffic:
    """Calls through every sidecar, ~20 a second in all, until stopped (bounded: at most 10 minutes)."""

    def __init__(self, sidecars: list[SidecarProcess]) -> None:
        self.sidecars = sidecars
        self.sent = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        deadline = time.monotonic() + 600
        while not self._stop.is_set() and time.monotonic() < deadline:
            for sidecar in self.sidecars:
                call(sidecar.url(15210) + "/pay")
                self.sent += 1
            self._stop.wait(0.1)

    def __enter__(self) -> Traffic:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(10)


def events_of(cluster: Cluster, namespace: str, reason: str) -> list[dict[str, Any]]:
    items = json.loads(cluster.kubectl("get", "events", "-n", namespace, "-o", "json").stdout)["items"]
    return [e for e in items if e.get("reason") == reason]
