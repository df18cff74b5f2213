"""What the operator remembers of each pod: just enough to count selected, injected and current pods."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from breakwater.injection.pod import (
    ANNOTATION_CONFIG_HASH,
    ANNOTATION_INJECT,
    ANNOTATION_POLICIES,
    SIDECAR_NAME,
)


@dataclass(frozen=True)
class PodFacts:
    name: str
    uid: str
    labels: tuple[tuple[str, str], ...]
    injected: bool
    config_hash: str
    policies: tuple[str, ...]
    ip: str
    opted_out: bool = False

    @property
    def label_map(self) -> dict[str, str]:
        return dict(self.labels)


def facts(body: Mapping[str, Any]) -> PodFacts | None:
    """The pod's facts, or None for pods that no longer count (finished or being deleted).

    Opted-out pods are remembered but never count as selected: their owners chose to run unprotected.
    """
    meta = body.get("metadata") or {}
    status = body.get("status") or {}
    if meta.get("deletionTimestamp") or status.get("phase") in {"Succeeded", "Failed"}:
        return None
    annotations = meta.get("annotations") or {}
    containers = (body.get("spec") or {}).get("containers") or ()
    return PodFacts(
        name=str(meta.get("name", "")),
        uid=str(meta.get("uid", "")),
        labels=tuple(sorted((meta.get("labels") or {}).items())),
        injected=any(c.get("name") == SIDECAR_NAME for c in containers),
        config_hash=str(annotations.get(ANNOTATION_CONFIG_HASH, "")),
        policies=tuple(p for p in str(annotations.get(ANNOTATION_POLICIES, "")).split(",") if p),
        ip=str(status.get("podIP", "")),
        opted_out=str(annotations.get(ANNOTATION_INJECT, "")).lower() == "false",
    )
