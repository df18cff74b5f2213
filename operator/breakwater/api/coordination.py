"""spec.coordination: decisions the operator takes for the whole fleet of a policy's sidecars."""

from __future__ import annotations

from breakwater.api.base import SpecModel
from breakwater.api.scalars import Percent

__all__ = ["Coordination"]


class Coordination(SpecModel):
    """Fleet-wide breaker decisions (docs/adaptive.md#fleet-quorum has the trade-offs)."""

    quorum_percent: Percent | None = None
    """When at least this share of the reporting sidecars have an upstream open, open it on every
    sidecar of the policy: the pods that tripped keep probing, the rest are released once those trials
    close their breakers (unset: off; each pod decides alone). Enforce mode only."""
