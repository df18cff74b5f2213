"""A policy with every trip rule on, as the tuner tests use it."""

from __future__ import annotations

from typing import Any

from breakwater.api.adaptive import Adaptive
from breakwater.api.policy import parse_spec
from breakwater.api.spec import CircuitBreakerPolicySpec
from breakwater.breaker.settings import BreakerSettings


def spec_with(
    adaptive: dict[str, Any] | None = None, trip: dict[str, Any] | None = None
) -> CircuitBreakerPolicySpec:
    return parse_spec(
        {
            "selector": {"matchLabels": {"app": "checkout"}},
            "upstreams": [{"name": "payments", "host": "127.0.0.1", "port": 8080, "listenPort": 15210}],
            "trip": trip
            or {
                "consecutiveFailures": 5,
                "failureRate": {"percent": 50},
                "slowCalls": {"percent": 80, "slowerThan": "1s"},
            },
            "adaptive": {"enabled": True, **(adaptive or {})},
        }
    )


def settings_and_params(
    adaptive: dict[str, Any] | None = None, trip: dict[str, Any] | None = None
) -> tuple[BreakerSettings, Adaptive]:
    spec = spec_with(adaptive, trip)
    return spec.settings_for("payments").breaker_settings(), spec.adaptive
