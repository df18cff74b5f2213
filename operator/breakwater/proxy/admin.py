"""The admin listener: probes, stats, metrics, and the config push endpoint.

- ``GET /healthz``: 200 while the process serves (never looks at breakers).
- ``GET /readyz``: 200 once a config is loaded, else 503; the body shows the running config hash and
  the last reload error, if any (an invalid reload never makes a loaded sidecar unready).
- ``GET /stats``: JSON per upstream: breaker state and figures, request counters, window figures, last
  transitions; plus the config hash, the last reload and its error, and the listeners.
- ``GET /metrics``: Prometheus text from this sidecar's own registry.
- ``PUT /config``: a whole `SidecarConfig` as JSON, applied like a file reload. Guarded by
  ``Authorization: Bearer $BREAKWATER_ADMIN_TOKEN`` when that variable is set, else loopback clients
  only. Answers 200 ``{"applied": bool, "configHash", "generation"}``, 400 (invalid), 401/403,
  409 (older generation than running), 413 (over 1 MiB), 422 (valid but cannot be applied here).
- ``GET /config``: the running config (same guard).
"""

from __future__ import annotations

import hmac
import ipaddress
import logging
import time
from typing import TYPE_CHECKING, Any

from aiohttp import web

from breakwater.api.sidecar import SidecarConfigError, parse_sidecar_config
from breakwater.proxy.metrics import CONTENT_TYPE, render
from breakwater.proxy.stats import wall_time

if TYPE_CHECKING:
    from breakwater.proxy.sidecar import Sidecar

__all__ = ["add_admin_routes", "stats_document"]

log = logging.getLogger(__name__)


def _sidecar(request: web.Request) -> Sidecar:
    from breakwater.proxy.sidecar import SIDECAR

    return request.app[SIDECAR]


def add_admin_routes(app: web.Application) -> None:
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/readyz", readyz)
    app.router.add_get("/stats", stats)
    app.router.add_get("/metrics", metrics)
    app.router.add_put("/config", put_config)
    app.router.add_get("/config", get_config)


async def healthz(request: web.Request) -> web.Response:
    return web.json_response({"ok": True})


async def readyz(request: web.Request) -> web.Response:
    sidecar = _sidecar(request)
    error = sidecar.last_reload_error
    doc: dict[str, Any] = {
        "ready": sidecar.ready,
        "configHash": sidecar.routes.config_hash or None,
        "lastReloadError": error.to_json() if error is not None else None,
    }
    return web.json_response(doc, status=200 if sidecar.ready else 503)


async def stats(request: web.Request) -> web.Response:
    return web.json_response(stats_document(_sidecar(request)))


async def metrics(request: web.Request) -> web.Response:
    body = render(_sidecar(request).registry)
    return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE})


def _guard(request: web.Request, sidecar: Sidecar) -> web.Response | None:
    token = sidecar.admin_token
    if token:
        scheme, _, value = request.headers.get("Authorization", "").partition(" ")
        if scheme.lower() != "bearer" or not hmac.compare_digest(value.strip().encode(), token.encode()):
            return web.json_response(
                {"error": "a valid bearer token is required"},
                status=401,
                headers={"WWW-Authenticate": 'Bearer realm="breakwater"'},
            )
        return None
    try:
        loopback = ipaddress.ip_address(request.remote or "").is_loopback
    except ValueError:
        loopback = False
    if not loopback:
        return web.json_response({"error": "config changes are accepted from loopback only"}, status=403)
    return None


async def put_config(request: web.Request) -> web.Response:
    from breakwater.proxy.sidecar import ConfigApplyError, StaleConfigError

    sidecar = _sidecar(request)
    denied = _guard(request, sidecar)
    if denied is not None:
        return denied
    raw = await request.read()
    try:
        config = parse_sidecar_config(raw, source="PUT /config")
    except SidecarConfigError as exc:
        sidecar.record_failure("PUT /config", exc.detail)
        return web.json_response({"error": exc.detail}, status=400)
    try:
        changed = await sidecar.apply_config(config, source="PUT /config")
    except StaleConfigError as exc:
        return web.json_response({"error": str(exc)}, status=409)
    except ConfigApplyError as exc:
        return web.json_response({"error": str(exc)}, status=422)
    return web.json_response(
        {"applied": changed, "configHash": sidecar.routes.config_hash, "generation": config.generation}
    )


async def get_config(request: web.Request) -> web.Response:
    sidecar = _sidecar(request)
    denied = _guard(request, sidecar)
    if denied is not None:
        return denied
    if sidecar.config is None:
        return web.json_response({"error": "no config loaded"}, status=404)
    return web.Response(text=sidecar.config.to_json(), content_type="application/json")


def stats_document(sidecar: Sidecar) -> dict[str, Any]:
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
        "startedAt": sidecar.timing.started_at,
        "uptimeSeconds": round(time.time() - sidecar.timing.started_at, 3),
        "clock": now,
        "listeners": {
            "admin": sidecar.admin_port,
            "forwardProxy": sidecar.forward_proxy_port,
        },
        "clientConnections": sidecar.client_connections(),
        "forwardProxy": proxy.stats.to_json(),
        "upstreams": upstreams,
    }
