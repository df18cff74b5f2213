"""From a CircuitBreakerPolicy (as the API server stores it) to the bundle its sidecars load.

The policy is validated with the api models first: whatever the CRD schema and its CEL rules could
not catch surfaces here as a `RenderError` with a reason for the `Accepted` condition.
"""

from __future__ import annotations

import datetime
from collections.abc import Collection, Mapping
from typing import Any

import pydantic

from breakwater.api.bundle import PolicyBundle
from breakwater.api.policy import PolicyError, parse_spec, problems_of
from breakwater.api.sidecar import (
    BulkheadConfig,
    FailureConfig,
    FallbackConfig,
    RetryConfig,
    UpstreamConfig,
)
from breakwater.api.spec import CircuitBreakerPolicySpec, FallbackKind, Mode, UpstreamSettings
from breakwater.breaker.settings import BreakerSettings
from breakwater.errors import InvalidInput


class RenderError(InvalidInput):
    """The policy cannot be turned into sidecar config; the class name is the `Accepted` condition's
    reason."""


class InvalidSpec(RenderError):
    """The spec breaks a rule the CRD schema could not enforce."""


class InvalidSidecarConfig(RenderError):
    """The spec is valid, but the sidecar config rendered from it is not."""


class ReservedListenPort(RenderError):
    """A listenPort is one of the sidecar ports the operator's settings give the policy's pods (the
    CRD's rule knows only the policy's own spec.sidecar and the built-in defaults)."""


def check_listen_ports(spec: CircuitBreakerPolicySpec, sidecar_ports: tuple[int, int]) -> None:
    """Refuse a listenPort equal to the admin or forward-proxy port this policy's sidecars bind: its
    own spec.sidecar, else the operator's `sidecar_ports`."""
    ports = spec.sidecar
    admin = ports.admin_port if ports is not None and ports.admin_port is not None else sidecar_ports[0]
    proxy = ports.proxy_port if ports is not None and ports.proxy_port is not None else sidecar_ports[1]
    taken = [(u.name, u.listen_port) for u in spec.upstreams if u.listen_port in (admin, proxy)]
    if admin == proxy:
        raise ReservedListenPort(
            f"spec.sidecar leaves the admin and forward-proxy ports both at {admin} (the operator's "
            "settings fill in the one it does not set): set both"
        )
    if taken:
        named = ", ".join(f"{port} ({name})" for name, port in taken)
        raise ReservedListenPort(
            f"listenPort {named} is a port of the sidecar itself: this policy's sidecars bind admin "
            f"port {admin} and forward-proxy port {proxy} (spec.sidecar, else the operator's "
            "--sidecar-admin-port/--sidecar-proxy-port): choose another listenPort"
        )


def _spec(body: Mapping[str, Any]) -> CircuitBreakerPolicySpec:
    try:
        return parse_spec(body.get("spec") or {})
    except PolicyError as exc:
        raise InvalidSpec(str(exc), problems=exc.problems) from exc


def effective_mode(spec: CircuitBreakerPolicySpec, *, now: datetime.datetime) -> Mode:
    """spec.mode, unless an override is in force (no `until`, or `until` still ahead)."""
    override = spec.override
    if override is None:
        return Mode(spec.mode)
    if override.until is not None and override.until <= now:
        return Mode(spec.mode)
    return Mode(override.mode)


def override_expiry(spec: CircuitBreakerPolicySpec) -> datetime.datetime | None:
    return spec.override.until if spec.override is not None else None


def override_end(spec: CircuitBreakerPolicySpec, *, now: datetime.datetime) -> tuple[float, Mode] | None:
    """For an override in force that ends: its end (wall-clock seconds) and the mode from then on. The
    sidecars switch by their own clock, so an override ends on time even while the operator is down."""
    override = spec.override
    if override is None or override.until is None or override.until <= now:
        return None
    return override.until.timestamp(), Mode(spec.mode)


def fallback_config(settings: UpstreamSettings) -> FallbackConfig:
    fallback = settings.fallback
    kind = FallbackKind(fallback.kind)
    if kind is FallbackKind.STATIC and fallback.static is not None:
        return FallbackConfig(
            kind=FallbackKind.STATIC,
            status=fallback.static.status,
            headers=dict(fallback.static.headers or {}),
            body=fallback.static.body,
        )
    if kind is FallbackKind.CACHED:
        cached = fallback.cached_settings
        return FallbackConfig(
            kind=FallbackKind.CACHED,
            max_age_seconds=cached.max_age.seconds,
            max_entries=cached.max_entries,
            max_bytes=cached.max_bytes,
        )
    return FallbackConfig(kind=FallbackKind.NONE)


def upstream_config(
    spec: CircuitBreakerPolicySpec,
    name: str,
    *,
    mode: Mode,
    policy: str,
    ends: tuple[float, Mode] | None = None,
    breaker: BreakerSettings | None = None,
    fleet_open: bool = False,
) -> UpstreamConfig:
    """The sidecar's config of upstream `name`; `breaker` replaces the spec's thresholds (tuned ones),
    `ends` is when the override's `mode` gives way to which mode, `fleet_open` a quorum hold."""
    upstream = spec.upstream(name)
    settings = spec.settings_for(name)
    failures = settings.failures
    retry = settings.retry
    bulkhead = settings.bulkhead
    return UpstreamConfig(
        name=upstream.name,
        policy=policy,
        host=upstream.host,
        port=upstream.port,
        listen_port=upstream.listen_port,
        mode=mode,
        mode_until=ends[0] if ends else None,
        mode_after=ends[1] if ends else None,
        fleet_open=fleet_open,
        breaker=breaker or settings.breaker_settings(),
        failures=FailureConfig(
            status_codes=list(failures.status_codes),
            timeouts=failures.timeouts,
            connect_errors=failures.connect_errors,
            resets=failures.resets,
        ),
        timeout_seconds=settings.timeout.seconds,
        fallback=fallback_config(settings),
        bulkhead=(
            BulkheadConfig(max_concurrent=bulkhead.max_concurrent, max_pending=bulkhead.max_pending)
            if bulkhead is not None
            else BulkheadConfig()
        ),
        retry=(
            RetryConfig(
                attempts=retry.attempts,
                per_try_timeout_seconds=retry.per_try_timeout.seconds if retry.per_try_timeout else None,
                budget_percent=float(retry.budget_percent),
                retry_on=list(retry.retry_on),
            )
            if retry is not None
            else RetryConfig(attempts=1)
        ),
    )


def render_bundle(
    body: Mapping[str, Any],
    *,
    now: datetime.datetime | None = None,
    tuned: Mapping[str, BreakerSettings] | None = None,
    held: Collection[str] = (),
    sidecar_ports: tuple[int, int] | None = None,
) -> PolicyBundle:
    """The bundle of the policy `body` (a whole CircuitBreakerPolicy object), with the thresholds the
    tuner chose for some upstreams (`tuned`) and the upstreams a fleet quorum holds open (`held`);
    with the operator's `sidecar_ports`, a listenPort that takes one of them is refused."""
    meta = body.get("metadata") or {}
    spec = _spec(body)
    if sidecar_ports is not None:
        check_listen_ports(spec, sidecar_ports)
    policy = f"{meta.get('namespace', '')}/{meta.get('name', '')}"
    at = now or datetime.datetime.now(datetime.UTC)
    mode = effective_mode(spec, now=at)
    ends = override_end(spec, now=at)
    tuned = tuned or {}
    try:
        upstreams = [
            upstream_config(
                spec,
                u.name,
                mode=mode,
                policy=policy,
                ends=ends,
                breaker=tuned.get(u.name),
                fleet_open=u.name in held and mode is Mode.ENFORCE,
            )
            for u in spec.upstreams
        ]
    except pydantic.ValidationError as exc:
        raise InvalidSidecarConfig.of(problems_of(exc)) from exc
    return PolicyBundle(
        policy=policy,
        uid=str(meta.get("uid", "")),
        created=str(meta.get("creationTimestamp", "")),
        generation=int(meta.get("generation") or 0),
        selector=spec.selector.model_dump(by_alias=True, exclude_none=True),
        transparent=spec.transparent,
        upstreams=upstreams,
        admin_port=spec.sidecar.admin_port if spec.sidecar is not None else None,
        proxy_port=spec.sidecar.proxy_port if spec.sidecar is not None else None,
    )
