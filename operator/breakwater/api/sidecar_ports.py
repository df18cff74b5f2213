"""spec.sidecar: the ports of the sidecar itself, for the pods a policy injects."""

from __future__ import annotations

from typing import Annotated

from pydantic import Field

from breakwater.api import rules
from breakwater.api.base import SpecModel

__all__ = ["SidecarPorts"]


class SidecarPorts(SpecModel):
    """Where the sidecars this policy injects bind their own listeners, instead of the operator's
    settings (chart sidecar.adminPort and sidecar.proxyPort). Decided when a pod is created: a change
    reaches a pod when it is recreated."""

    __cel_rules__ = (rules.SIDECAR_PORTS_DISTINCT,)

    admin_port: Annotated[int, Field(ge=1024, le=65535)] | None = None
    """Port of the sidecar's admin listener (probes, /stats, /metrics); default: the operator's
    setting, 15200 unless the chart says otherwise."""
    proxy_port: Annotated[int, Field(ge=1024, le=65535)] | None = None
    """Port of the sidecar's forward proxy (transparent mode); default: the operator's setting, 15201
    unless the chart says otherwise."""
