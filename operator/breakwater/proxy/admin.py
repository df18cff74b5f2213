"""The admin endpoints: probes, stats, metrics, and the config push, as plain request -> answer functions
(served by `proxy/admin_server.py`, no web framework).

- ``GET /healthz``: 200 while the process serves (never looks at breakers).
- ``GET /readyz``: 200 once a config is loaded, else 503; the body shows the running config hash and
  the last reload error, if any (an invalid reload never makes a loaded sidecar unready).
- ``GET /stats``: JSON per upstream: breaker state and figures, request counters (by path too), window
  figures, last transitions; plus the config hash, the last reload and its error, and the listeners.
- ``GET /metrics``: Prometheus text (`proxy/metrics.py`).
- ``PUT /config``: a whole `SidecarConfig` as JSON, applied like a file reload. Guarded by
  ``Authorization: Bearer $BREAKWATER_ADMIN_TOKEN`` when that variable is set, else loopback clients
  only. Answers 200 ``{"applied": bool, "configHash", "generation"}``, 400 (invalid), 401/403,
  409 (older generation than running), 413 (over 1 MiB), 422 (valid but cannot be applied here).
- ``GET /config``: the running config (same guard).

An injected sidecar (`breakwater proxy --policies-dir`) refuses ``PUT /config`` with 403, whoever
asks: its config comes from the policies only (the mounted ConfigMap and the operator's report
channel), and the loopback guard would not keep the app out, since every container of a pod shares
its loopback. ``GET /config`` (read-only) keeps its guard.

The sidecar is seen through `AdminView`, so this module does not import it (no import circle).
"""

from __future__ import annotations

import hmac
import ipaddress
import json
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Protocol

from breakwater.api.plain.parse import parse_sidecar_config
from breakwater.api.plain.sidecar import PlainSidecarConfig, SidecarConfigError
from breakwater.proxy.metrics import CONTENT_TYPE, render
from breakwater.proxy.reload import ConfigApplyError, ReloadCounters, ReloadStatus, StaleConfigError
from breakwater.proxy.stats import wall_time
from breakwater.proxy.targets import ForwardRouter
from breakwater.proxy.upstream import RouteTable

__all__ = ["MAX_BODY", "AdminAnswer", "AdminRequest", "AdminView", "handle", "stats_document"]

MAX_BODY = 1024 * 1024
_JSON = "application/json; charset=utf-8"


class AdminView(Protocol):
    """What the admin endpoints read and call on the sidecar."""

    routes: RouteTable
    config: PlainSidecarConfig | None
    admin_token: str | None
    config_api: bool
    clock: Callable[[], float]

    @property
    def started_at(self) -> float: ...
    @property
    def reload_counters(self) -> ReloadCounters: ...
    @property
    def ready(self) -> bool: ...
    @property
    def last_reload(self) -> ReloadStatus | None: ...
    @property
    def last_reload_error(self) -> ReloadStatus | None: ...
    @property
    def admin_port(self) -> int | None: ...
    @property
    def forward_proxy_port(self) -> int | None: ...
    @property
    def forward_proxy(self) -> ForwardRouter: ...
    def listen_port(self, upstream: str) -> int: ...
    def client_connections(self) -> int: ...
    def record_failure(self, source: str, error: str) -> None: ...
    async def apply_config(self, config: PlainSidecarConfig, *, source: str = "api") -> bool: ...


@dataclass(slots=True)
class AdminRequest:
    method: str
    path: str
    headers: dict[str, str]  # lower-cased names
    body: bytes = b""
    peer: str = ""


@dataclass(slots=True)
class AdminAnswer:
    status: int
    body: bytes
    headers: list[tuple[str, str]] = field(default_factory=list)


def _json(doc: object, status: int = 200, headers: list[tuple[str, str]] | None = None) -> AdminAnswer:
    return AdminAnswer(status, json.dumps(doc).encode(), [("Content-Type", _JSON), *(headers or [])])


async def handle(sidecar: AdminView, request: AdminRequest) -> AdminAnswer:
    """The answer to one admin request."""
    route = (request.method, request.path.partition("?")[0])
    if route == ("GET", "/healthz"):
        return _json({"ok": True})
    if route == ("GET", "/readyz"):
        error = sidecar.last_reload_error
        doc = {
            "ready": sidecar.ready,
            "configHash": sidecar.routes.config_hash or None,
            "lastReloadError": error.to_json() if error is not None else None,
        }
        return _json(doc, 200 if sidecar.ready else 503)
    if route == ("GET", "/stats"):
        return _json(stats_document(sidecar))
    if route == ("GET", "/metrics"):
        return AdminAnswer(
            200, render(sidecar.routes, sidecar.reload_counters), [("Content-Type", CONTENT_TYPE)]
        )
    if route == ("PUT", "/config"):
        return await _put_config(sidecar, request)
    if route == ("GET", "/config"):
        denied = _guard(sidecar, request)
        if denied is not None:
            return denied
        if sidecar.config is None:
            return _json({"error": "no config loaded"}, 404)
        return AdminAnswer(200, sidecar.config.to_json().encode(), [("Content-Type", _JSON)])
    if route[1] in ("/healthz", "/readyz", "/stats", "/metrics", "/config"):
        return _json({"error": "method not allowed"}, 405)
    return _json({"error": "not found"}, 404)


def _guard(sidecar: AdminView, request: AdminRequest, *, write: bool = False) -> AdminAnswer | None:
    if write and not sidecar.config_api:
        return _json(
            {
                "error": "this sidecar was injected by the operator: its config comes from the policies "
                "selecting the pod (the breakwater-sidecar-config ConfigMap and the operator), not from "
                "PUT /config; edit the CircuitBreakerPolicy instead"
            },
            403,
        )
    token = sidecar.admin_token
    if token:
        scheme, _, value = request.headers.get("authorization", "").partition(" ")
        if scheme.lower() != "bearer" or not hmac.compare_digest(value.strip().encode(), token.encode()):
            return _json(
                {"error": "a valid bearer token is required"},
                401,
                [("WWW-Authenticate", 'Bearer realm="breakwater"')],
            )
        return None
    try:
        loopback = ipaddress.ip_address(request.peer).is_loopback
    except ValueError:
        loopback = False
    if not loopback:
        return _json({"error": "config changes are accepted from loopback only"}, 403)
    return None


async def _put_config(sidecar: AdminView, request: AdminRequest) -> AdminAnswer:
    denied = _guard(sidecar, request, write=True)
    if denied is not None:
        return denied
    try:
        config = parse_sidecar_config(request.body, source="PUT /config")
    except SidecarConfigError as exc:
        sidecar.record_failure("PUT /config", exc.detail)
        return _json({"error": exc.detail}, 400)
    try:
        changed = await sidecar.apply_config(config, source="PUT /config")
    except StaleConfigError as exc:
        return _json({"error": str(exc)}, 409)
    except ConfigApplyError as exc:
        return _json({"error": str(exc)}, 422)
    return _json(
        {"applied": changed, "configHash": sidecar.routes.config_hash, "generation": config.generation}
    )


def stats_document(sidecar: AdminView) -> dict[str, Any]:
    """What /stats shows (also `Sidecar.stats()`)."""
    routes = sidecar.routes
    clock = sidecar.clock
    now = clock()
    upstreams: dict[str, Any] = {}
    for name, up in routes.by_name.items():
        snap = up.breaker.snapshot()
        st = up.stats
        try:
            listen_port: int | None = sidecar.listen_port(name)
        except KeyError:
            listen_port = None
        doc: dict[str, Any] = {
            "policy": up.policy,
            "host": up.host,
            "port": up.port,
            "listenPort": listen_port,
            "mode": snap.mode.value,
            "state": snap.state.value,
            "stateSince": wall_time(snap.state_since, clock=clock),
            "retryAfterSeconds": round(up.breaker.retry_after(), 3) if snap.open_until is not None else None,
            "breaker": {
                "calls": snap.calls,
                "failures": snap.failures,
                "slowCalls": snap.slow_calls,
                "ignored": snap.ignored,
                "rejections": snap.rejections,
                "wouldReject": snap.would_reject,
                "trips": snap.trips,
                "consecutiveFailures": snap.consecutive_failures,
                "trialsInFlight": snap.trials_in_flight,
                "openStreak": snap.open_streak,
            },
            "window": {
                "calls": snap.window_calls,
                "failureRate": snap.window_failure_rate,
                "slowRate": snap.window_slow_rate,
            },
            "requests": st.outcomes(),
            "retries": st.retries,
            "fallbacks": {"static": st.fallback_static, "cached": st.fallback_cached},
            "inFlight": st.in_flight,
            "paths": {"fast": st.fast_path, "full": st.full_path},
            "lastTransitions": [event.to_json() for event in st.last_transitions],
        }
        if up.bulkhead is not None:
            doc["bulkhead"] = {"active": up.bulkhead.active, "pending": up.bulkhead.pending}
        if up.budget is not None:
            requests, retries = up.budget.figures()
            doc["retryBudget"] = {"windowRequests": requests, "windowRetries": retries}
        if up.cache is not None:
            doc["cache"] = {"entries": len(up.cache), "bytes": up.cache.bytes}
        upstreams[name] = doc
    last = sidecar.last_reload
    error = sidecar.last_reload_error
    proxy = sidecar.forward_proxy
    return {
        "ready": sidecar.ready,
        "configHash": routes.config_hash or None,
        "generation": routes.config.generation if sidecar.ready else None,
        "lastReload": last.to_json() if last is not None else None,
        "lastReloadError": error.to_json() if error is not None else None,
        "startedAt": sidecar.started_at,
        "uptimeSeconds": round(time.time() - sidecar.started_at, 3),
        "clock": now,
        "listeners": {
            "admin": sidecar.admin_port,
            "forwardProxy": sidecar.forward_proxy_port,
        },
        "clientConnections": sidecar.client_connections(),
        "forwardProxy": proxy.stats.to_json(),
        "upstreams": upstreams,
    }
