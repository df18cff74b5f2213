"""Reading the sidecar config (`plain.sidecar`'s dataclasses) with the models' rules and messages.

`parse_sidecar_config` is the models' function of the same name without pydantic: the same verdict, the
same values, the same message (`tests/unit/api/test_plain.py`). A document with a value only the models
can decide (`fields.NeedsModels`) is handed to them.
"""

from __future__ import annotations

import dataclasses
import enum
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

from breakwater.api.plain import defaults as d
from breakwater.api.plain import fields as f
from breakwater.api.plain.sidecar import (
    NAME_PATTERN,
    FallbackKind,
    PlainAdminConfig,
    PlainBulkheadConfig,
    PlainFailureConfig,
    PlainFallbackConfig,
    PlainForwardProxyConfig,
    PlainRetryConfig,
    PlainSidecarConfig,
    PlainUpstreamConfig,
    SidecarConfigError,
    camel,
    check_config,
    config_version,
    fallback_headers,
    host_name,
    ip_address,
    retry_conditions,
    status_codes,
)
from breakwater.breaker.settings import BreakerSettings, InvalidBreakerSettings, Mode, WindowKind

__all__ = ["fields_of", "load_sidecar_config", "parse_sidecar_config", "read_config", "read_upstream"]


Reader = Callable[[f.Errors, f.Loc, Any], Any]


def _checked(read: Reader, check: Callable[[Any], str | Any]) -> Reader:
    """`read`, then a field validator: `check` returns the value, or raises ValueError."""

    def run(errors: f.Errors, loc: f.Loc, value: Any) -> Any:
        got = read(errors, loc, value)
        if got is f.BAD:
            return got
        try:
            return check(got)
        except ValueError as exc:
            return errors.value_error(loc, got, str(exc))

    return run


def _int(**bounds: Any) -> Reader:
    return lambda e, loc, v: f.integer(e, loc, v, **bounds)


def _float(**bounds: Any) -> Reader:
    return lambda e, loc, v: f.number(e, loc, v, **bounds)


def _str(**checks: Any) -> Reader:
    return lambda e, loc, v: f.string(e, loc, v, **checks)


def _enum(kind: type[enum.Enum]) -> Reader:
    return lambda e, loc, v: f.enum(e, loc, v, kind)


def _list_of_str(e: f.Errors, loc: f.Loc, v: Any) -> Any:
    return f.list_of(e, loc, v, lambda e2, loc2, item: f.string(e2, loc2, item))


def _object(cls: type[Any], fields: tuple[f.Field, ...]) -> Reader:
    def read(errors: f.Errors, loc: f.Loc, value: Any) -> Any:
        values = f.read_fields(errors, loc, value, fields)
        return f.BAD if values is None else cls(**values)

    return read


def fields_of(cls: type[Any], *specs: tuple[str, Reader]) -> tuple[f.Field, ...]:
    """The fields of dataclass `cls` in the models' order (that of `specs`), with the dataclass's
    defaults (a factory is called per document; no default: required)."""
    known = {k.name: k for k in dataclasses.fields(cls)}
    out = []
    for name, read in specs:
        field = known[name]
        default: Any = field.default
        if default is dataclasses.MISSING:
            factory = field.default_factory
            default = f.MISSING if factory is dataclasses.MISSING else factory
        out.append(f.Field(name, camel(name), read, default))
    return tuple(out)


_PORT = _int(ge=0, le=65535)
_SECONDS = _float(gt=0)

_ADMIN = _object(
    PlainAdminConfig,
    fields_of(PlainAdminConfig, ("port", _PORT), ("address", _checked(_str(), ip_address))),
)
_FORWARD_PROXY = _object(
    PlainForwardProxyConfig,
    fields_of(
        PlainForwardProxyConfig,
        ("enabled", f.boolean),
        ("port", _PORT),
        ("unknown_hosts", lambda e, loc, v: f.literal(e, loc, v, ("PassThrough", "Refuse"))),
    ),
)
_FAILURES = _object(
    PlainFailureConfig,
    fields_of(
        PlainFailureConfig,
        ("status_codes", _checked(_list_of_str, status_codes)),
        ("timeouts", f.boolean),
        ("connect_errors", f.boolean),
        ("resets", f.boolean),
    ),
)
_FALLBACK = _object(
    PlainFallbackConfig,
    fields_of(
        PlainFallbackConfig,
        ("kind", _enum(FallbackKind)),
        ("status", _int(ge=200, le=599)),
        ("headers", _checked(f.dict_of_strings, fallback_headers)),
        ("body", _str()),
        ("max_age_seconds", _SECONDS),
        ("max_entries", _int(ge=1, le=1_000_000)),
        ("max_bytes", _int(ge=1)),
    ),
)
_BULKHEAD = _object(
    PlainBulkheadConfig,
    fields_of(PlainBulkheadConfig, ("max_concurrent", f.nullable(_int(ge=1))), ("max_pending", _int(ge=0))),
)
_RETRY = _object(
    PlainRetryConfig,
    fields_of(
        PlainRetryConfig,
        ("attempts", _int(ge=1, le=10)),
        ("per_try_timeout_seconds", f.nullable(_SECONDS)),
        ("budget_percent", _float(ge=0, le=100)),
        ("retry_on", _checked(_list_of_str, retry_conditions)),
    ),
)

_BREAKER_TYPES: dict[str, Reader] = {
    "int": _int(),
    "float": _float(),
    "int | None": f.nullable(_int()),
    "float | None": f.nullable(_float()),
    "WindowKind": _enum(WindowKind),
}
_BREAKER_FIELDS = tuple(
    f.Field(k.name, camel(k.name), _BREAKER_TYPES[str(k.type)]) for k in dataclasses.fields(BreakerSettings)
)
_BREAKER_DEFAULTS = {camel(k): v for k, v in dataclasses.asdict(d.UPSTREAM_BREAKER).items()}


def _breaker(errors: f.Errors, loc: f.Loc, value: Any) -> Any:
    """A partial block takes the spec's defaults for what it leaves out; `BreakerSettings` checks it."""
    if type(value) is dict:
        value = {**_BREAKER_DEFAULTS, **value}
    values = f.read_fields(errors, loc, value, _BREAKER_FIELDS, by_name=False, dataclass=True)
    if values is None:
        return f.BAD
    try:
        return BreakerSettings(**values)
    except InvalidBreakerSettings as exc:
        return errors.value_error(loc, value, str(exc))


_UPSTREAM_FIELDS = fields_of(
    PlainUpstreamConfig,
    ("name", _str(pattern=NAME_PATTERN)),
    ("policy", _str()),
    ("host", _checked(_str(min_length=1, max_length=253), host_name)),
    ("port", _int(ge=1, le=65535)),
    ("listen_port", f.nullable(_PORT)),
    ("mode", _enum(Mode)),
    ("mode_until", f.nullable(_float(gt=0))),
    ("mode_after", f.nullable(_enum(Mode))),
    ("fleet_open", f.boolean),
    ("breaker", _breaker),
    ("failures", _FAILURES),
    ("timeout_seconds", _SECONDS),
    ("fallback", _FALLBACK),
    ("bulkhead", _BULKHEAD),
    ("retry", _RETRY),
)
read_upstream = _object(PlainUpstreamConfig, _UPSTREAM_FIELDS)
"""Read one `upstreams[]` entry (a reader of `fields`: errors, location, value)."""


_CONFIG_FIELDS = fields_of(
    PlainSidecarConfig,
    ("version", _checked(_int(), config_version)),
    ("config_hash", _str()),
    ("generation", _int(ge=0)),
    ("listen_address", _checked(_str(), ip_address)),
    ("admin", _ADMIN),
    ("forward_proxy", _FORWARD_PROXY),
    ("upstreams", lambda e, loc, v: f.list_of(e, loc, v, read_upstream)),
)


def read_config(errors: f.Errors, loc: f.Loc, value: Any) -> Any:
    """Read one whole config (a reader of `fields`); `NeedsModels` when only the models can tell."""
    values = f.read_fields(errors, loc, value, _CONFIG_FIELDS)
    if values is None:
        return f.BAD
    values["upstreams"] = tuple(values["upstreams"])
    config = PlainSidecarConfig(**values)
    try:
        check_config(config)
    except ValueError as exc:
        return errors.value_error(loc, value, str(exc))
    return config


def _by_the_models(document: dict[str, Any], source: str) -> PlainSidecarConfig:
    """What the models make of a document this module cannot decide, read back as plain values."""
    from breakwater.api.sidecar import parse_sidecar_config as parse_with_models

    canonical = json.loads(parse_with_models(document, source=source).to_json())
    errors = f.Errors()
    config = read_config(errors, (), canonical)
    assert not errors.records, errors.records  # the models' own dump always reads
    return config  # type: ignore[no-any-return]


def parse_sidecar_config(data: bytes | str | dict[str, Any], *, source: str = "") -> PlainSidecarConfig:
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
    errors = f.Errors()
    try:
        config = read_config(errors, (), document)
    except f.NeedsModels:
        return _by_the_models(document, source)
    if errors.records:
        raise SidecarConfigError("; ".join(str(p) for p in errors.problems()), source=source)
    return config  # type: ignore[no-any-return]


def load_sidecar_config(path: str | Path) -> PlainSidecarConfig:
    """Read and validate the config file at `path`; raise `SidecarConfigError` if it cannot be used."""
    try:
        raw = Path(path).read_bytes()
    except OSError as exc:
        raise SidecarConfigError(f"cannot read: {exc.strerror or exc}", source=str(path)) from exc
    return parse_sidecar_config(raw, source=str(path))
