"""A policy bundle (`api/bundle.py`'s model) as the sidecar reads it: a frozen dataclass, no pydantic."""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from breakwater.api.plain import defaults as d
from breakwater.api.plain import fields as f
from breakwater.api.plain.parse import fields_of, read_upstream
from breakwater.api.plain.sidecar import PlainUpstreamConfig
from breakwater.errors import InvalidInput

__all__ = ["BUNDLE_VERSION", "BundleError", "PlainPolicyBundle", "parse_bundle"]

BUNDLE_VERSION = 1


class BundleError(InvalidInput):
    """A mounted bundle that cannot be read (the message names the fields)."""


@dataclass(frozen=True, slots=True)
class PlainPolicyBundle:
    policy: str
    """`namespace/name` of the policy."""
    selector: dict[str, Any]
    version: int = d.POLICY_BUNDLE_VERSION
    uid: str = ""
    created: str = ""
    """The policy's creationTimestamp (RFC 3339): the older policy wins a conflict."""
    generation: int = d.POLICY_BUNDLE_GENERATION
    transparent: bool = d.POLICY_BUNDLE_TRANSPARENT
    upstreams: tuple[PlainUpstreamConfig, ...] = ()
    admin_port: int | None = None
    """spec.sidecar.adminPort: the admin port of the pods this policy injects (None: the operator's)."""
    proxy_port: int | None = None
    """spec.sidecar.proxyPort, likewise."""

    @property
    def name(self) -> str:
        return self.policy.rpartition("/")[2]


def _selector(errors: f.Errors, loc: f.Loc, value: Any) -> Any:
    if type(value) is not dict:
        if value is None or type(value) in (bool, int, float, list):
            return errors.add(loc, "dict_type", value, "Input should be a valid dictionary")
        raise f.NeedsModels(loc)
    return value


def _str(errors: f.Errors, loc: f.Loc, value: Any) -> Any:
    return f.string(errors, loc, value)


_FIELDS = fields_of(
    PlainPolicyBundle,
    ("version", f.integer),
    ("policy", _str),
    ("uid", _str),
    ("created", _str),
    ("generation", lambda e, loc, v: f.integer(e, loc, v, ge=0)),
    ("selector", _selector),
    ("transparent", f.boolean),
    ("upstreams", lambda e, loc, v: f.list_of(e, loc, v, read_upstream)),
    ("admin_port", f.nullable(f.integer)),
    ("proxy_port", f.nullable(f.integer)),
)


def read_bundle(errors: f.Errors, loc: f.Loc, value: Any) -> Any:
    """Read one bundle (a reader of `fields`); `NeedsModels` when only the models can tell."""
    # Fields a newer operator adds are ignored, as the model does.
    values = f.read_fields(errors, loc, value, _FIELDS, extra="ignore")
    if values is None:
        return f.BAD
    values["upstreams"] = tuple(values["upstreams"])
    return PlainPolicyBundle(**values)


def parse_bundle(data: bytes | str) -> PlainPolicyBundle:
    """One bundle as the operator writes it (JSON); `BundleError` says what is wrong."""
    try:
        document = json.loads(data)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise BundleError(f"not valid JSON: {exc}") from exc
    errors = f.Errors()
    try:
        bundle = read_bundle(errors, (), document)
    except f.NeedsModels:
        from breakwater.api.bundle import PolicyBundle as Model  # the definition decides

        try:
            canonical = json.loads(Model.model_validate(document).to_json())
        except ValueError as exc:  # pydantic's ValidationError is a ValueError
            raise BundleError(str(exc)) from exc
        bundle = read_bundle(errors, (), canonical)
    if errors.records:
        raise BundleError("; ".join(str(p) for p in errors.problems()))
    return bundle  # type: ignore[no-any-return]
