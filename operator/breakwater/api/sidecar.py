"""The sidecar configuration: what the operator renders and the proxy loads (a JSON file or a push).

This is a machine format, not a user-facing one: durations are plain float seconds, every field has the
spelling the operator writes (camelCase), unknown fields are errors. The models are pure pydantic; the
proxy turns them into its runtime objects (`breakwater.proxy.classifiers`).

Additions beyond the first published sketch, all optional with inert defaults:

- ``generation``: a monotonic number the operator may stamp on each config it renders; a config older
  than the one running (lower generation) is refused, so a lagging ConfigMap mount cannot roll back a
  config that was pushed live. ``0`` (the default) turns the check off.
- ``listenAddress``: where the upstream listeners and the forward proxy bind (a pod's loopback by
  default; the cluster tests bind each "pod" its own 127.x address).
- ``admin.address``: where the admin listener binds (all interfaces by default, for probes and scrapes).
- ``upstreams[].modeUntil`` / ``modeAfter``: an override's end (wall-clock seconds) and the mode from
  then on; the sidecar switches by its own clock (`proxy/modeclock.py`), with or without the operator.
- ``upstreams[].fleetOpen``: the fleet quorum holds this upstream open on every pod whose breaker has
  not tripped on its own (`proxy/modeclock.applied_mode`).
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from dataclasses import asdict
from pathlib import Path
from typing import Annotated, Any, Literal, Self

from pydantic import (
    BeforeValidator,
    Field,
    ValidationError,
    field_validator,
    model_validator,
)
from pydantic.alias_generators import to_camel

from breakwater.api.base import WireModel
from breakwater.api.constants import SIDECAR_ADMIN_PORT, SIDECAR_FORWARD_PROXY_PORT
from breakwater.api.plain import sidecar as plain
from breakwater.api.plain.sidecar import (
    NAME_PATTERN,
    REJECTED_STATUS,
    SIDECAR_CONFIG_VERSION,
    SidecarConfigError,
    check_config,
)
from breakwater.api.policy import problems_of
from breakwater.api.spec import Bulkhead, CircuitBreakerPolicySpec, FallbackKind, Retry, UpstreamSettings
from breakwater.breaker.settings import BreakerSettings, Mode

# Every default of the wire format is the spec's (api/spec.py), read from its models.
_SPEC = UpstreamSettings()
_RETRY = Retry()
_DEFAULT_MODE: Mode = CircuitBreakerPolicySpec.model_fields["mode"].default

__all__ = [
    "SIDECAR_CONFIG_VERSION",
    "AdminConfig",
    "BreakerBlock",
    "BulkheadConfig",
    "FailureConfig",
    "FallbackConfig",
    "ForwardProxyConfig",
    "RetryConfig",
    "SidecarConfig",
    "SidecarConfigError",
    "UpstreamConfig",
    "load_sidecar_config",
    "parse_sidecar_config",
]


Port = Annotated[int, Field(ge=0, le=65535)]
Seconds = Annotated[float, Field(gt=0, allow_inf_nan=False)]
Percent = Annotated[float, Field(gt=0, le=100, allow_inf_nan=False)]


class AdminConfig(WireModel):
    """The admin listener: probes, stats, metrics, config pushes."""

    port: Port = SIDECAR_ADMIN_PORT
    address: str = "0.0.0.0"

    @field_validator("address")
    @classmethod
    def _check_address(cls, value: str) -> str:
        return plain.ip_address(value)


class ForwardProxyConfig(WireModel):
    """The HTTP forward-proxy listener (for apps that honour ``HTTP_PROXY``)."""

    enabled: bool = False
    port: Port = SIDECAR_FORWARD_PROXY_PORT
    unknown_hosts: Literal["PassThrough", "Refuse"] = "PassThrough"


def _complete_breaker(block: Any) -> Any:
    """A partial `breaker` block (a hand-written config, or one from an operator that did not know a
    newer field) takes the spec's defaults for what it leaves out."""
    if isinstance(block, Mapping):
        return {**_DEFAULT_BREAKER, **block}
    return block


_DEFAULT_BREAKER = {to_camel(k): v for k, v in asdict(_SPEC.breaker_settings()).items()}

BreakerBlock = Annotated[BreakerSettings, BeforeValidator(_complete_breaker)]
"""The engine's settings as they travel (camelCase), validated by `BreakerSettings` itself."""


class FailureConfig(WireModel):
    """What counts as a failure of the upstream (everything else an upstream answers is a success)."""

    status_codes: list[str] = Field(default_factory=lambda: list(_SPEC.failures.status_codes))
    timeouts: bool = _SPEC.failures.timeouts
    connect_errors: bool = _SPEC.failures.connect_errors
    resets: bool = _SPEC.failures.resets

    @field_validator("status_codes")
    @classmethod
    def _check_codes(cls, value: list[str]) -> list[str]:
        return list(plain.status_codes(value))


class FallbackConfig(WireModel):
    """What a rejected (or unanswered) request gets instead of a bare 503."""

    kind: FallbackKind = _SPEC.fallback.kind
    status: Annotated[int, Field(ge=200, le=599)] = REJECTED_STATUS
    headers: dict[str, str] = Field(default_factory=dict)
    body: str = ""
    max_age_seconds: Seconds = _SPEC.fallback.cached_settings.max_age.seconds
    max_entries: Annotated[int, Field(ge=1, le=1_000_000)] = _SPEC.fallback.cached_settings.max_entries
    max_bytes: Annotated[int, Field(ge=1)] = _SPEC.fallback.cached_settings.max_bytes

    @field_validator("headers")
    @classmethod
    def _check_headers(cls, value: dict[str, str]) -> dict[str, str]:
        return plain.fallback_headers(value)


class BulkheadConfig(WireModel):
    """At most ``maxConcurrent`` requests in flight to the upstream, ``maxPending`` more waiting."""

    max_concurrent: Annotated[int, Field(ge=1)] | None = None
    max_pending: Annotated[int, Field(ge=0)] = Bulkhead.model_fields["max_pending"].default


class RetryConfig(WireModel):
    """Retries of idempotent requests, within a budget (retries <= budgetPercent of requests)."""

    attempts: Annotated[int, Field(ge=1, le=10)] = 1  # 1: no retry (a policy without `retry`)
    per_try_timeout_seconds: Seconds | None = None
    budget_percent: Annotated[float, Field(ge=0, le=100, allow_inf_nan=False)] = float(_RETRY.budget_percent)
    retry_on: list[str] = Field(default_factory=lambda: list(_RETRY.retry_on))

    @field_validator("retry_on")
    @classmethod
    def _check_retry_on(cls, value: list[str]) -> list[str]:
        return list(plain.retry_conditions(value))


class UpstreamConfig(WireModel):
    """One upstream the app calls, with its breaker and protections."""

    name: Annotated[str, Field(pattern=NAME_PATTERN)]
    policy: str = ""
    host: Annotated[str, Field(min_length=1, max_length=253)]
    port: Annotated[int, Field(ge=1, le=65535)]
    listen_port: Port | None = None
    mode: Mode = _DEFAULT_MODE
    mode_until: Annotated[float, Field(gt=0, allow_inf_nan=False)] | None = None
    mode_after: Mode | None = None
    fleet_open: bool = False
    breaker: BreakerBlock = Field(default_factory=_SPEC.breaker_settings)
    failures: FailureConfig = Field(default_factory=FailureConfig)
    timeout_seconds: Seconds = _SPEC.timeout.seconds
    fallback: FallbackConfig = Field(default_factory=FallbackConfig)
    bulkhead: BulkheadConfig = Field(default_factory=BulkheadConfig)
    retry: RetryConfig = Field(default_factory=RetryConfig)

    @field_validator("host")
    @classmethod
    def _check_host(cls, value: str) -> str:
        return plain.host_name(value)


class SidecarConfig(WireModel):
    """The whole sidecar configuration (one JSON document)."""

    version: int = SIDECAR_CONFIG_VERSION
    config_hash: str = ""
    generation: Annotated[int, Field(ge=0)] = 0
    listen_address: str = "127.0.0.1"
    admin: AdminConfig = Field(default_factory=AdminConfig)
    forward_proxy: ForwardProxyConfig = Field(default_factory=ForwardProxyConfig)
    upstreams: list[UpstreamConfig] = Field(default_factory=list)

    @field_validator("version")
    @classmethod
    def _check_version(cls, value: int) -> int:
        return plain.config_version(value)

    @field_validator("listen_address")
    @classmethod
    def _check_listen_address(cls, value: str) -> str:
        return plain.ip_address(value)

    @model_validator(mode="after")
    def _check_upstreams(self) -> Self:
        check_config(self)
        return self

    def upstream(self, name: str) -> UpstreamConfig:
        """The upstream called `name` (`KeyError` if there is none)."""
        for up in self.upstreams:
            if up.name == name:
                return up
        raise KeyError(name)

    def to_json(self) -> str:
        """The canonical JSON form (camelCase, every field), as the operator should write it."""
        return self.model_dump_json(by_alias=True)

    def effective_hash(self) -> str:
        """``configHash`` as rendered, or a digest of the canonical form when the renderer left it empty."""
        if self.config_hash:
            return self.config_hash
        return hashlib.sha256(self.to_json().encode()).hexdigest()[:16]


def parse_sidecar_config(data: bytes | str | dict[str, Any], *, source: str = "") -> SidecarConfig:
    """Parse and validate one config document; raise `SidecarConfigError` saying what is wrong."""
    if isinstance(data, dict):
        document: Any = data
    else:
        try:
            document = json.loads(data)
        except (UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise SidecarConfigError(f"not valid JSON: {exc}", source=source) from exc
    if not isinstance(document, dict):
        raise SidecarConfigError("the document must be a JSON object", source=source)
    try:
        return SidecarConfig.model_validate(document)
    except ValidationError as exc:
        raise SidecarConfigError("; ".join(str(p) for p in problems_of(exc)), source=source) from exc


def load_sidecar_config(path: str | Path) -> SidecarConfig:
    """Read and validate the config file at `path`; raise `SidecarConfigError` if it cannot be used."""
    try:
        raw = Path(path).read_bytes()
    except OSError as exc:
        raise SidecarConfigError(f"cannot read: {exc.strerror or exc}", source=str(path)) from exc
    return parse_sidecar_config(raw, source=str(path))
