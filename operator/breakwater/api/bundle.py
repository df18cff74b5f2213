"""A policy as the sidecars receive it: its selector and its rendered upstreams.

The operator writes one bundle per policy into the namespace's ConfigMap (key `<policy>.json`). A
sidecar, knowing its own pod's labels, resolves the bundles that select it into one `SidecarConfig`
with `breakwater.injection.resolve` — the same function the webhook and the status use, so what the
operator reports and what the sidecar runs cannot disagree.
"""

from __future__ import annotations

from typing import Annotated, Any

from pydantic import ConfigDict, Field

from breakwater.api.base import WireModel
from breakwater.api.plain.bundle import BUNDLE_VERSION
from breakwater.api.sidecar import UpstreamConfig
from breakwater.api.spec import CircuitBreakerPolicySpec


class PolicyBundle(WireModel):
    # Fields a newer operator adds are ignored, not refused: a sidecar injected by an older release
    # keeps reading every bundle of its namespace after an upgrade.
    model_config = ConfigDict(extra="ignore")

    version: int = BUNDLE_VERSION
    policy: str
    """`namespace/name` of the policy."""
    uid: str = ""
    created: str = ""
    """The policy's creationTimestamp (RFC 3339): the older policy wins a conflict."""
    generation: Annotated[int, Field(ge=0)] = 0
    selector: dict[str, Any]
    transparent: bool = CircuitBreakerPolicySpec.model_fields["transparent"].default  # the spec's
    upstreams: list[UpstreamConfig] = Field(default_factory=list)
    admin_port: int | None = None
    """spec.sidecar.adminPort: the admin port of the pods this policy injects (None: the operator's)."""
    proxy_port: int | None = None
    """spec.sidecar.proxyPort, likewise."""

    @property
    def name(self) -> str:
        return self.policy.rpartition("/")[2]

    def to_json(self) -> str:
        # The ports only when set: sidecars older than spec.sidecar refuse fields they do not know.
        unset = {f for f in ("admin_port", "proxy_port") if getattr(self, f) is None}
        return self.model_dump_json(by_alias=True, exclude=unset)


def bundle_key(policy_name: str) -> str:
    """The ConfigMap key of a policy's bundle."""
    return f"{policy_name}.json"
