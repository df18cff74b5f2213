"""Prometheus metrics, read from the live counters at scrape time (nothing on the hot path).

Each sidecar has its OWN `CollectorRegistry` (several sidecars can live in one test process, and the
process-global default registry would mix them). Names follow Prometheus conventions; every upstream
series carries ``upstream`` and ``policy`` labels:

- ``breakwater_upstream_state{state}``: 1 for the breaker's current state, 0 for the others
- ``breakwater_upstream_requests_total{outcome}``: success, failure, rejected, bulkhead_full, client_error
- ``breakwater_upstream_rejections_total{reason}``: open (breaker), bulkhead_full
- ``breakwater_upstream_would_reject_total``: Observe mode's dry-run rejections
- ``breakwater_upstream_transitions_total{from,to}``, ``breakwater_upstream_trips_total``
- ``breakwater_upstream_retries_total``, ``breakwater_upstream_fallbacks_total{kind}``
- ``breakwater_upstream_in_flight``, ``breakwater_upstream_window_failure_ratio``
- ``breakwater_upstream_request_duration_seconds``: histogram of the time until the response headers
- ``breakwater_config_info{config_hash}``, ``breakwater_config_reloads_total{result}``
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily
from prometheus_client.metrics_core import Metric
from prometheus_client.registry import Collector

from breakwater.breaker import State
from breakwater.proxy.stats import DURATION_BUCKETS
from breakwater.proxy.upstream import RouteTable

__all__ = ["CONTENT_TYPE", "ReloadCounters", "SidecarCollector", "new_registry", "render"]

CONTENT_TYPE = CONTENT_TYPE_LATEST
_STATE_LABELS = {State.CLOSED: "closed", State.OPEN: "open", State.HALF_OPEN: "half_open"}
_BUCKET_LABELS = [format(b, "g") for b in DURATION_BUCKETS] + ["+Inf"]


@dataclass(slots=True)
class ReloadCounters:
    success: int = 0
    failure: int = 0


class SidecarCollector(Collector):
    def __init__(self, *, routes: Callable[[], RouteTable], reloads: ReloadCounters) -> None:
        self._routes = routes
        self._reloads = reloads

    def collect(self) -> Iterable[Metric]:
        routes = self._routes()
        up_labels = ["upstream", "policy"]
        state = GaugeMetricFamily(
            "breakwater_upstream_state",
            "Breaker state (1 for the current one).",
            labels=[*up_labels, "state"],
        )
        requests = CounterMetricFamily(
            "breakwater_upstream_requests", "Requests by final outcome.", labels=[*up_labels, "outcome"]
        )
        rejections = CounterMetricFamily(
            "breakwater_upstream_rejections", "Requests refused by the proxy.", labels=[*up_labels, "reason"]
        )
        would_reject = CounterMetricFamily(
            "breakwater_upstream_would_reject",
            "Requests Observe mode let through but would reject.",
            labels=up_labels,
        )
        transitions = CounterMetricFamily(
            "breakwater_upstream_transitions", "Breaker state transitions.", labels=[*up_labels, "from", "to"]
        )
        trips = CounterMetricFamily(
            "breakwater_upstream_trips", "Times the breaker tripped open.", labels=up_labels
        )
        retries = CounterMetricFamily("breakwater_upstream_retries", "Retries sent.", labels=up_labels)
        fallbacks = CounterMetricFamily(
            "breakwater_upstream_fallbacks", "Fallback answers served.", labels=[*up_labels, "kind"]
        )
        in_flight = GaugeMetricFamily(
            "breakwater_upstream_in_flight", "Requests in flight.", labels=up_labels
        )
        failure_ratio = GaugeMetricFamily(
            "breakwater_upstream_window_failure_ratio",
            "Failure ratio of the breaker's current window (absent while empty).",
            labels=up_labels,
        )
        duration = HistogramMetricFamily(
            "breakwater_upstream_request_duration_seconds",
            "Time from sending a request until the upstream's response headers (or its failure).",
            labels=up_labels,
        )
        for up in routes.by_name.values():
            lv = [up.name, up.policy]
            snap = up.breaker.snapshot()
            stats = up.stats
            for st, text in _STATE_LABELS.items():
                state.add_metric([*lv, text], 1.0 if snap.state is st else 0.0)
            for outcome, count in stats.outcomes().items():
                requests.add_metric([*lv, outcome], count)
            rejections.add_metric([*lv, "open"], stats.rejected)
            rejections.add_metric([*lv, "bulkhead_full"], stats.bulkhead_full)
            would_reject.add_metric(lv, snap.would_reject)
            for (src, dst), count in stats.transitions.items():
                transitions.add_metric([*lv, src, dst], count)
            trips.add_metric(lv, snap.trips)
            retries.add_metric(lv, stats.retries)
            fallbacks.add_metric([*lv, "static"], stats.fallback_static)
            fallbacks.add_metric([*lv, "cached"], stats.fallback_cached)
            in_flight.add_metric(lv, stats.in_flight)
            if snap.window_failure_rate is not None:
                failure_ratio.add_metric(lv, snap.window_failure_rate)
            cumulative = 0
            buckets: list[tuple[str, float]] = []
            for label, count in zip(_BUCKET_LABELS, stats.buckets, strict=True):
                cumulative += count
                buckets.append((label, cumulative))
            duration.add_metric(lv, buckets, stats.duration_sum)
        yield from (
            state,
            requests,
            rejections,
            would_reject,
            transitions,
            trips,
            retries,
            fallbacks,
            in_flight,
            failure_ratio,
            duration,
        )
        info = GaugeMetricFamily(
            "breakwater_config_info", "The config running (1), by hash.", labels=["config_hash", "generation"]
        )
        if routes.config_hash:
            info.add_metric([routes.config_hash, str(routes.config.generation)], 1.0)
        yield info
        reloads = CounterMetricFamily(
            "breakwater_config_reloads", "Config loads by result.", labels=["result"]
        )
        reloads.add_metric(["success"], self._reloads.success)
        reloads.add_metric(["failure"], self._reloads.failure)
        yield reloads


def new_registry(collector: SidecarCollector) -> CollectorRegistry:
    registry = CollectorRegistry(auto_describe=False)
    registry.register(collector)
    return registry


def render(registry: CollectorRegistry) -> bytes:
    return generate_latest(registry)
