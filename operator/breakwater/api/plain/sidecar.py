"""The sidecar config (`api/sidecar.py`'s models) as frozen dataclasses, read without pydantic.

Same fields, defaults, checks and messages as the models; `to_dict` / `to_json` give what the
models' ``model_dump(by_alias=True)`` / ``model_dump_json(by_alias=True)`` give. The defaults are the
models' (theirs are api/spec.py's), read from `defaults.py`, which `make generate` writes from them
(this module may not import the models). A document with a value only the models can decide goes to
them.
"""

from __future__ import annotations

import dataclasses
import enum
import hashlib
import ipaddress
import json
import re
from dataclasses import dataclass, field
from typing import Any

from breakwater.api.headers import MANAGED_HEADERS
from breakwater.api.plain import defaults as d
from breakwater.breaker.settings import BreakerSettings, Mode
from breakwater.errors import InvalidInput

__all__ = [
    "SIDECAR_CONFIG_VERSION",
    "FallbackKind",
    "PlainAdminConfig",
    "PlainBulkheadConfig",
    "PlainFailureConfig",
    "PlainFallbackConfig",
    "PlainForwardProxyConfig",
    "PlainRetryConfig",
    "PlainSidecarConfig",
    "PlainUpstreamConfig",
    "SidecarConfigError",
    "check_config",
]

SIDECAR_CONFIG_VERSION = 1
"""The only `SidecarConfig.version` this code understands."""
REJECTED_STATUS = 503
"""What a rejected call gets without a fallback: 503 Service Unavailable."""


class SidecarConfigError(InvalidInput):
    """A sidecar config that cannot be used: unreadable, not JSON, or not matching the schema (the
    message names the camelCase field paths the operator writes)."""


class FallbackKind(enum.StrEnum):
    """None: a rejected call gets 503. Static: a fixed response. Cached: the last good response."""

    NONE = "None"
    STATIC = "Static"
    CACHED = "Cached"


_FALLBACK_KIND = FallbackKind(d.FALLBACK_KIND)  # written as its value: defaults.py cannot import this module


_STATUS_PATTERN = re.compile(r"^(?:[1-5]xx|[1-5][0-9]{2})$")
_RETRY_ON_WORDS = frozenset({"connect-failure", "reset", "timeout", "5xx", "gateway-error", "retriable-4xx"})
NAME_PATTERN = r"^[A-Za-z0-9]([A-Za-z0-9._-]{0,61}[A-Za-z0-9])?$"
_HEADER_NAME = re.compile(r"^[!#$%&'*+\-.^_`|~0-9A-Za-z]+$")
_HOP_BY_HOP = frozenset(MANAGED_HEADERS)


def camel(name: str) -> str:
    head, *rest = name.split("_")
    return head + "".join(part.title() for part in rest)


def _plain(value: Any) -> Any:
    """A dataclass tree as the models dump it: camelCase keys, lists, enums kept."""
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {camel(k.name): _plain(getattr(value, k.name)) for k in dataclasses.fields(value)}
    if isinstance(value, tuple | list):
        return [_plain(v) for v in value]
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    return value


@dataclass(frozen=True, slots=True)
class PlainAdminConfig:
    """The admin listener: probes, stats, metrics, config pushes."""

    port: int = d.ADMIN_PORT
    address: str = d.ADMIN_ADDRESS


@dataclass(frozen=True, slots=True)
class PlainForwardProxyConfig:
    """The HTTP forward-proxy listener (for apps that honour ``HTTP_PROXY``)."""

    enabled: bool = d.FORWARD_PROXY_ENABLED
    port: int = d.FORWARD_PROXY_PORT
    unknown_hosts: str = d.FORWARD_PROXY_UNKNOWN_HOSTS


@dataclass(frozen=True, slots=True)
class PlainFailureConfig:
    """What counts as a failure of the upstream (everything else an upstream answers is a success)."""

    status_codes: tuple[str, ...] = d.FAILURE_STATUS_CODES
    timeouts: bool = d.FAILURE_TIMEOUTS
    connect_errors: bool = d.FAILURE_CONNECT_ERRORS
    resets: bool = d.FAILURE_RESETS


@dataclass(frozen=True, slots=True)
class PlainFallbackConfig:
    """What a rejected (or unanswered) request gets instead of a bare 503."""

    kind: FallbackKind = _FALLBACK_KIND
    status: int = d.FALLBACK_STATUS
    headers: dict[str, str] = field(default_factory=dict)
    body: str = ""
    max_age_seconds: float = d.FALLBACK_MAX_AGE_SECONDS
    max_entries: int = d.FALLBACK_MAX_ENTRIES
    max_bytes: int = d.FALLBACK_MAX_BYTES


@dataclass(frozen=True, slots=True)
class PlainBulkheadConfig:
    """At most ``maxConcurrent`` requests in flight to the upstream, ``maxPending`` more waiting."""

    max_concurrent: int | None = None
    max_pending: int = d.BULKHEAD_MAX_PENDING


@dataclass(frozen=True, slots=True)
class PlainRetryConfig:
    """Retries of idempotent requests, within a budget (retries <= budgetPercent of requests)."""

    attempts: int = d.RETRY_ATTEMPTS
    per_try_timeout_seconds: float | None = None
    budget_percent: float = d.RETRY_BUDGET_PERCENT
    retry_on: tuple[str, ...] = d.RETRY_RETRY_ON


@dataclass(frozen=True, slots=True)
class PlainUpstreamConfig:
    """One upstream the app calls, with its breaker and protections."""

    name: str
    host: str
    port: int
    policy: str = ""
    listen_port: int | None = None
    mode: Mode = d.UPSTREAM_MODE
    mode_until: float | None = None
    mode_after: Mode | None = None
    fleet_open: bool = d.UPSTREAM_FLEET_OPEN
    breaker: BreakerSettings = d.UPSTREAM_BREAKER
    failures: PlainFailureConfig = PlainFailureConfig()
    timeout_seconds: float = d.UPSTREAM_TIMEOUT_SECONDS
    fallback: PlainFallbackConfig = field(default_factory=PlainFallbackConfig)
    bulkhead: PlainBulkheadConfig = PlainBulkheadConfig()
    retry: PlainRetryConfig = PlainRetryConfig()

    def to_dict(self) -> dict[str, Any]:
        """The wire form, keys in the models' order."""
        out: dict[str, Any] = _plain(self)
        return {key: out[key] for key in _UPSTREAM_ORDER}


_UPSTREAM_ORDER = (
    *("name", "policy", "host", "port", "listenPort", "mode", "modeUntil", "modeAfter", "fleetOpen"),
    *("breaker", "failures", "timeoutSeconds", "fallback", "bulkhead", "retry"),
)


@dataclass(frozen=True, slots=True)
class PlainSidecarConfig:
    """The whole sidecar configuration (one JSON document)."""

    version: int = d.SIDECAR_VERSION
    config_hash: str = ""
    generation: int = d.SIDECAR_GENERATION
    listen_address: str = d.SIDECAR_LISTEN_ADDRESS
    admin: PlainAdminConfig = PlainAdminConfig()
    forward_proxy: PlainForwardProxyConfig = PlainForwardProxyConfig()
    upstreams: tuple[PlainUpstreamConfig, ...] = ()

    def upstream(self, name: str) -> PlainUpstreamConfig:
        """The upstream called `name` (`KeyError` if there is none)."""
        for up in self.upstreams:
            if up.name == name:
                return up
        raise KeyError(name)

    def replace(self, **changes: Any) -> PlainSidecarConfig:
        return dataclasses.replace(self, **changes)

    def to_dict(self) -> dict[str, Any]:
        """The wire form (camelCase, every field), as the models dump it."""
        out: dict[str, Any] = _plain(self)
        out["upstreams"] = [up.to_dict() for up in self.upstreams]
        return out

    def to_json(self) -> str:
        """The canonical JSON form (camelCase, every field), as the operator should write it."""
        return json.dumps(self.to_dict(), separators=(",", ":"), ensure_ascii=False)

    def effective_hash(self) -> str:
        """``configHash`` as rendered, or a digest of the canonical form when the renderer left it empty."""
        if self.config_hash:
            return self.config_hash
        return hashlib.sha256(self.to_json().encode()).hexdigest()[:16]


# --- the checks the models run too (api/sidecar.py calls these) -----------------------------------


def ip_address(value: str) -> str:
    try:
        return str(ipaddress.ip_address(value))
    except ValueError:
        raise ValueError(f"{value!r} is not an IP address") from None


def status_codes(value: list[str]) -> tuple[str, ...]:
    for code in value:
        if not _STATUS_PATTERN.fullmatch(code):
            raise ValueError(f"{code!r} is not a status code (e.g. '503') or class (e.g. '5xx')")
    return tuple(value)


def retry_conditions(value: list[str]) -> tuple[str, ...]:
    for word in value:
        if word not in _RETRY_ON_WORDS and not re.fullmatch(r"[1-5][0-9]{2}", word):
            allowed = ", ".join(sorted(_RETRY_ON_WORDS))
            raise ValueError(f"{word!r} is not a retry condition ({allowed}, or a status like '503')")
    return tuple(value)


def fallback_headers(value: dict[str, str]) -> dict[str, str]:
    for name, text in value.items():
        if not _HEADER_NAME.fullmatch(name):
            raise ValueError(f"{name!r} is not a valid header name")
        if name.lower() in _HOP_BY_HOP:
            raise ValueError(f"{name!r} is managed by the proxy and cannot be set")
        if "\r" in text or "\n" in text or "\0" in text:
            raise ValueError(f"the value of {name!r} contains a line break or NUL")
    return value


def host_name(value: str) -> str:
    host = value.strip().rstrip(".").lower()
    if not host or any(c in host for c in "/?#@ \t"):
        raise ValueError(f"{value!r} is not a host name or IP address")
    return host


def config_version(value: int) -> int:
    if value != SIDECAR_CONFIG_VERSION:
        raise ValueError(f"unsupported sidecar config version {value} (this sidecar reads version 1)")
    return value


def check_config(config: Any) -> None:
    """The checks across upstreams (the models' `_check_upstreams`): ValueError says which."""
    names: set[str] = set()
    ports: dict[int, str] = {}
    if config.admin.port:
        ports[config.admin.port] = "admin"
    proxy = config.forward_proxy
    if proxy.enabled and proxy.port:
        if proxy.port in ports:
            raise ValueError(f"forwardProxy.port {proxy.port} is also the admin port")
        ports[proxy.port] = "forwardProxy"
    targets: dict[tuple[str, int], str] = {}
    for up in config.upstreams:
        if up.name in names:
            raise ValueError(f"upstream name {up.name!r} is used twice")
        names.add(up.name)
        if up.listen_port:
            if up.listen_port in ports:
                owner = ports[up.listen_port]
                raise ValueError(
                    f"upstream {up.name!r}: listenPort {up.listen_port} is already used by {owner}"
                )
            ports[up.listen_port] = f"upstream {up.name!r}"
        if proxy.enabled:
            target = (up.host, up.port)
            if target in targets:
                raise ValueError(
                    f"upstreams {targets[target]!r} and {up.name!r} both route {up.host}:{up.port} "
                    "through the forward proxy"
                )
            targets[target] = up.name
