"""The report channel as the sidecar speaks it (`api/report.py`'s models): reports out, replies in.

Written without pydantic; `tests/unit/api/test_plain.py` checks that a report written here is what
the models read, field for field, and that a reply reads as the models read it.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from typing import Any

from breakwater.api.plain import fields as f
from breakwater.api.plain.parse import read_config
from breakwater.api.plain.sidecar import PlainSidecarConfig, SidecarConfigError, camel
from breakwater.breaker.settings import Mode, State

__all__ = [
    "CONFIG_PATH",
    "LATENCY_BOUNDS_SECONDS",
    "REPORT_VERSION",
    "PlainConfigReply",
    "PlainSidecarReport",
    "PlainTransitionReport",
    "PlainUpstreamReport",
]

REPORT_VERSION = 1
CONFIG_PATH = "/v1/config"
LATENCY_BOUNDS_SECONDS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
"""Upper bounds of the latency histogram a sidecar reports (`UpstreamReport.latency`): the buckets of its
`breakwater_upstream_request_duration_seconds` histogram, plus one bin for slower calls."""


def _wire(value: Any) -> Any:
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {camel(k.name): _wire(getattr(value, k.name)) for k in dataclasses.fields(value)}
    if isinstance(value, list | tuple):
        return [_wire(v) for v in value]
    return value


@dataclass(frozen=True, slots=True)
class PlainUpstreamReport:
    """One breaker of one sidecar."""

    name: str
    state: State
    policy: str = ""
    mode: Mode = Mode.ENFORCE
    calls: int = 0
    failures: int = 0
    rejections: int = 0
    would_reject: int = 0
    trips: int = 0
    window_calls: int = 0
    failure_rate: float | None = None
    slow_rate: float | None = None
    state_since: float | None = None
    latency_p50_ms: float | None = None
    latency_p99_ms: float | None = None
    latency: list[int] = field(default_factory=list)


@dataclass(frozen=True, slots=True)
class PlainTransitionReport:
    upstream: str
    from_state: str  # a `State`
    to_state: str
    at: float
    policy: str = ""
    reason: str = ""


@dataclass(frozen=True, slots=True)
class PlainSidecarReport:
    namespace: str
    pod: str
    version: int = REPORT_VERSION
    pod_uid: str = ""
    config_hash: str = ""
    seq: int = 0
    sent_at: float = 0.0
    upstreams: list[PlainUpstreamReport] = field(default_factory=list)
    transitions: list[PlainTransitionReport] = field(default_factory=list)

    def to_json(self) -> str:
        """What the models' ``model_dump_json(by_alias=True)`` writes (keys in any order)."""
        return json.dumps(_wire(self), separators=(",", ":"), ensure_ascii=False)


@dataclass(frozen=True, slots=True)
class PlainConfigReply:
    """The operator's answer: the hash the pod should run, and the config when it is not the one it runs."""

    config_hash: str
    config: PlainSidecarConfig | None = None

    @classmethod
    def from_json(cls, body: bytes | str) -> PlainConfigReply:
        """Unknown fields are ignored (a newer operator's additions); the config itself is strict."""
        try:
            document = json.loads(body)
        except (UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise SidecarConfigError(f"a config reply that is not JSON: {exc}") from exc
        errors = f.Errors()
        try:
            values = f.read_fields(errors, (), document, _REPLY, extra="ignore")
        except f.NeedsModels:
            from breakwater.api.report import ConfigReply as Model  # the definition decides

            try:
                model = Model.model_validate(document)
            except ValueError as exc:  # pydantic's ValidationError is a ValueError
                raise SidecarConfigError(str(exc)) from exc
            values = f.read_fields(errors, (), json.loads(model.model_dump_json(by_alias=True)), _REPLY)
        if values is None:
            raise SidecarConfigError("; ".join(str(p) for p in errors.problems()))
        return cls(**values)


_REPLY = (
    f.Field("config_hash", "configHash", lambda e, loc, v: f.string(e, loc, v)),
    f.Field("config", "config", f.nullable(read_config), None),
)
