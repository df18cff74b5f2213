"""The report channel between sidecars and the operator: what a sidecar says, what the operator answers.

A sidecar sends a `SidecarReport` at once on each breaker transition and as a periodic summary, as a
signed datagram (`api/datagram.py`); the operator answers with the config hash the pod should run. A
sidecar told another hash than it runs fetches `GET /v1/config?hash=H`, answered with a `ConfigReply`.
Times are wall-clock seconds since the epoch (the sidecar's clock).
"""

from __future__ import annotations

from typing import Annotated

from pydantic import ConfigDict, Field

from breakwater.api.base import WireModel
from breakwater.api.plain.report import CONFIG_PATH, LATENCY_BOUNDS_SECONDS, REPORT_VERSION
from breakwater.api.sidecar import SidecarConfig
from breakwater.breaker.settings import Mode, State

__all__ = [
    "CONFIG_PATH",
    "LATENCY_BOUNDS_SECONDS",
    "REPORT_VERSION",
    "ConfigReply",
    "ReportModel",
    "SidecarReport",
    "TransitionReport",
    "UpstreamReport",
]

Count = Annotated[int, Field(ge=0)]


class ReportModel(WireModel):
    """Reports and answers ignore fields they do not know: a sidecar and an operator of different
    versions keep talking (a newer peer's additions are dropped, not refused)."""

    model_config = ConfigDict(extra="ignore", validate_default=False)


class UpstreamReport(ReportModel):
    """One breaker of one sidecar."""

    name: Annotated[str, Field(max_length=63)]
    policy: Annotated[str, Field(max_length=317)] = ""
    state: State
    mode: Mode = Mode.ENFORCE
    calls: Count = 0
    failures: Count = 0
    rejections: Count = 0
    would_reject: Count = 0
    trips: Count = 0
    window_calls: Count = 0
    failure_rate: Annotated[float, Field(ge=0, le=1)] | None = None
    slow_rate: Annotated[float, Field(ge=0, le=1)] | None = None
    state_since: float | None = None
    latency_p50_ms: Annotated[float, Field(ge=0)] | None = None
    latency_p99_ms: Annotated[float, Field(ge=0)] | None = None
    latency: Annotated[list[Count], Field(max_length=32)] = Field(default_factory=list)
    """Attempts by duration until the response headers, cumulative over the sidecar's life: one count
    per bin of `LATENCY_BOUNDS_SECONDS` and one for slower attempts (empty: an older sidecar)."""


class TransitionReport(ReportModel):
    upstream: Annotated[str, Field(max_length=63)]
    policy: str = ""
    from_state: State
    to_state: State
    reason: Annotated[str, Field(max_length=64)] = ""
    at: float


class SidecarReport(ReportModel):
    version: int = REPORT_VERSION
    namespace: Annotated[str, Field(min_length=1, max_length=63)]
    pod: Annotated[str, Field(min_length=1, max_length=253)]
    pod_uid: Annotated[str, Field(max_length=64)] = ""
    config_hash: Annotated[str, Field(max_length=64)] = ""
    seq: Count = 0
    sent_at: float = 0.0
    upstreams: Annotated[list[UpstreamReport], Field(max_length=64)] = Field(default_factory=list)
    transitions: Annotated[list[TransitionReport], Field(max_length=256)] = Field(default_factory=list)


class ConfigReply(ReportModel):
    """The operator's answer: the hash the pod should run, and the config when it is not the one it runs."""

    config_hash: str
    config: SidecarConfig | None = None
