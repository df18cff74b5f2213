"""spec.coordination: decisions the operator takes for the whole fleet of a policy's sidecars."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from breakwater.api.base import SpecModel
from breakwater.api.scalars import Percent

__all__ = ["Coordination", "inert_coordination"]


class Coordination(SpecModel):
    """Fleet-wide breaker decisions (docs/adaptive.md#fleet-quorum has the trade-offs)."""

    quorum_percent: Percent | None = None
    """When at least this share of the reporting sidecars have an upstream open, open it on every
    sidecar of the policy: the pods that tripped keep probing, the rest are released once those trials
    close their breakers, or once none of the pods that tripped reports any more (unset: off; each pod
    decides alone). Enforce mode only: in Observe mode it is accepted with a warning and does nothing."""


def inert_coordination(spec: Mapping[str, Any]) -> list[str]:
    """What of spec.coordination does nothing with the rest of the spec as it is (`breakwater validate`
    warns, the operator posts a Warning Event): a quorum in Observe mode, which never rejects a call."""
    coordination = spec.get("coordination")
    quorum = coordination.get("quorumPercent") if isinstance(coordination, Mapping) else None
    if quorum is not None and spec.get("mode") == "Observe":
        return [
            "spec.coordination.quorumPercent: Observe mode never rejects a call, so the quorum does "
            "nothing until spec.mode is Enforce"
        ]
    return []
