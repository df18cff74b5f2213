"""Prometheus metrics, written at scrape time from the live counters (nothing on the hot path).

The exposition is the Prometheus text format 0.0.4, written here directly: prometheus_client would add
several MB to every pod's RSS to format a few dozen lines (a unit test parses this output with
prometheus_client's own parser). Each sidecar renders its own upstreams only. Every upstream series
carries ``upstream`` and ``policy`` labels:

- ``breakwater_upstream_state{state}``: 1 for the breaker's current state, 0 for the others
- ``breakwater_upstream_requests_total{outcome}``: success, failure, rejected, bulkhead_full, client_error
- ``breakwater_upstream_path_requests_total{path}``: requests served by the fast and the full path
- ``breakwater_upstream_rejections_total{reason}``: open (breaker), bulkhead_full
- ``breakwater_upstream_would_reject_total``: Observe mode's dry-run rejections
- ``breakwater_upstream_transitions_total{from,to}``, ``breakwater_upstream_trips_total``
- ``breakwater_upstream_retries_total``, ``breakwater_upstream_fallbacks_total{kind}``
- ``breakwater_upstream_in_flight``, ``breakwater_upstream_window_failure_ratio``
- ``breakwater_upstream_request_duration_seconds``: histogram of the time until the response headers
- ``breakwater_config_info{config_hash}``, ``breakwater_config_reloads_total{result}``
"""

from __future__ import annotations

import math
from typing import Final

from breakwater.breaker import State
from breakwater.proxy.reload import ReloadCounters
from breakwater.proxy.stats import DURATION_BUCKETS
from breakwater.proxy.upstream import RouteTable

__all__ = ["CONTENT_TYPE", "render"]

CONTENT_TYPE: Final = "text/plain; version=0.0.4; charset=utf-8"
_STATE_LABELS: Final = ((State.CLOSED, "closed"), (State.OPEN, "open"), (State.HALF_OPEN, "half_open"))


def _number(value: float) -> str:
    """A sample value as prometheus_client writes it (Go's float formatting)."""
    if value == math.inf:
        return "+Inf"
    if value == -math.inf:
        return "-Inf"
    if math.isnan(value):
        return "NaN"
    text = repr(float(value))
    dot = text.find(".")
    if value > 0 and dot > 6:
        mantissa = f"{text[0]}.{text[1:dot]}{text[dot + 1 :]}".rstrip("0.")
        return f"{mantissa}e+0{dot - 1}"
    return text


def _escape(value: str) -> str:
    return value.replace("\\", r"\\").replace("\n", r"\n").replace('"', r"\"")


_BUCKET_LABELS: Final = [format(b, "g") for b in DURATION_BUCKETS] + ["+Inf"]


class _Family:
    __slots__ = ("help", "kind", "name", "samples")

    def __init__(self, name: str, kind: str, help_text: str) -> None:
        self.name = name
        self.kind = kind
        self.help = help_text
        self.samples: list[str] = []

    def add(self, labels: dict[str, str], value: float, suffix: str = "") -> None:
        text = ",".join(f'{k}="{_escape(v)}"' for k, v in sorted(labels.items()))
        braces = f"{{{text}}}" if text else ""
        self.samples.append(f"{self.name}{suffix}{braces} {_number(value)}\n")

    def render(self, out: list[str]) -> None:
        exposed = self.name + ("_total" if self.kind == "counter" else "")
        out.append(
            f"# HELP {exposed} {self.help.replace(chr(92), chr(92) * 2)}\n# TYPE {exposed} {self.kind}\n"
        )
        out.extend(self.samples)


def render(routes: RouteTable, reloads: ReloadCounters) -> bytes:
    """The whole exposition of one sidecar."""
    state = _Family("breakwater_upstream_state", "gauge", "Breaker state (1 for the current one).")
    requests = _Family("breakwater_upstream_requests", "counter", "Requests by final outcome.")
    paths = _Family("breakwater_upstream_path_requests", "counter", "Requests by the path that served them.")
    rejections = _Family("breakwater_upstream_rejections", "counter", "Requests refused by the proxy.")
    would_reject = _Family(
        "breakwater_upstream_would_reject", "counter", "Requests Observe mode let through but would reject."
    )
    transitions = _Family("breakwater_upstream_transitions", "counter", "Breaker state transitions.")
    trips = _Family("breakwater_upstream_trips", "counter", "Times the breaker tripped open.")
    retries = _Family("breakwater_upstream_retries", "counter", "Retries sent.")
    fallbacks = _Family("breakwater_upstream_fallbacks", "counter", "Fallback answers served.")
    in_flight = _Family("breakwater_upstream_in_flight", "gauge", "Requests in flight.")
    failure_ratio = _Family(
        "breakwater_upstream_window_failure_ratio",
        "gauge",
        "Failure ratio of the breaker's current window (absent while empty).",
    )
    duration = _Family(
        "breakwater_upstream_request_duration_seconds",
        "histogram",
        "Time from sending a request until the upstream's response headers (or its failure).",
    )
    for up in routes.by_name.values():
        lv = {"upstream": up.name, "policy": up.policy}
        snap = up.breaker.snapshot()
        stats = up.stats
        for st, text in _STATE_LABELS:
            state.add({**lv, "state": text}, 1.0 if snap.state is st else 0.0)
        for outcome, count in stats.outcomes().items():
            requests.add({**lv, "outcome": outcome}, count, "_total")
        paths.add({**lv, "path": "fast"}, stats.fast_path, "_total")
        paths.add({**lv, "path": "full"}, stats.full_path, "_total")
        rejections.add({**lv, "reason": "open"}, stats.rejected, "_total")
        rejections.add({**lv, "reason": "bulkhead_full"}, stats.bulkhead_full, "_total")
        would_reject.add(lv, snap.would_reject, "_total")
        for (src, dst), count in stats.transitions.items():
            transitions.add({**lv, "from": src, "to": dst}, count, "_total")
        trips.add(lv, snap.trips, "_total")
        retries.add(lv, stats.retries, "_total")
        fallbacks.add({**lv, "kind": "static"}, stats.fallback_static, "_total")
        fallbacks.add({**lv, "kind": "cached"}, stats.fallback_cached, "_total")
        in_flight.add(lv, stats.in_flight)
        if snap.window_failure_rate is not None:
            failure_ratio.add(lv, snap.window_failure_rate)
        cumulative = 0
        for label, count in zip(_BUCKET_LABELS, stats.buckets, strict=True):
            cumulative += count
            duration.add({**lv, "le": label}, cumulative, "_bucket")
        duration.add(lv, cumulative, "_count")
        duration.add(lv, stats.duration_sum, "_sum")
    info = _Family("breakwater_config_info", "gauge", "The config running (1), by hash.")
    if routes.config_hash:
        info.add({"config_hash": routes.config_hash, "generation": str(routes.config.generation)}, 1.0)
    loads = _Family("breakwater_config_reloads", "counter", "Config loads by result.")
    loads.add({"result": "success"}, reloads.success, "_total")
    loads.add({"result": "failure"}, reloads.failure, "_total")
    out: list[str] = []
    families = (state, requests, paths, rejections, would_reject, transitions, trips, retries, fallbacks)
    for family in (*families, in_flight, failure_ratio, duration, info, loads):
        family.render(out)
    return "".join(out).encode()
