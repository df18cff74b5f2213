"""One adaptive policy of one upstream, and how many calls its history holds: shared by the tests of
`controller.adaptive.Adaptation`."""

from __future__ import annotations

from typing import Any

from breakwater.controller.adaptive import Adaptation

POLICY = "shop/payments"
WALL = 1_800_000_000.0


def body() -> dict[str, Any]:
    return {
        "metadata": {"name": "payments", "namespace": "shop", "generation": 1},
        "spec": {
            "selector": {"matchLabels": {"app": "checkout"}},
            "upstreams": [{"name": "payments", "host": "127.0.0.1", "port": 8080, "listenPort": 15210}],
            "trip": {"consecutiveFailures": 5, "failureRate": {"percent": 50}},
            "adaptive": {"enabled": True},
        },
    }


def calls_in(a: Adaptation) -> int:
    history = a.tunings[(POLICY, "payments")].history
    return sum(totals.calls for _, totals in history.buckets(WALL + 60))
