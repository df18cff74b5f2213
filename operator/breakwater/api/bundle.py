"""A policy as the sidecars receive it: its selector and its rendered upstreams.

The operator writes one bundle per policy into the namespace's ConfigMap (key `<policy>.json`). A
sidecar, knowing its own pod's labels, resolves the bundles that select it into one `SidecarConfig`
with `breakwater.injection.resolve` — the same function the webhook and the status use, so what the
operator reports and what the sidecar runs cannot disagree.
"""

from __future__ import annotations

from typing import Annotated, Any

from pydantic import Field

from breakwater.api.base import WireModel
from breakwater.api.sidecar import UpstreamConfig

BUNDLE_VERSION = 1


class PolicyBundle(WireModel):
    version: int = BUNDLE_VERSION
    policy: str
    """`namespace/name` of the policy."""
    uid: str = ""
    created: str = ""
    """The policy's creationTimestamp (RFC 3339): the older policy wins a conflict."""
    generation: Annotated[int, Field(ge=0)] = 0
    selector: dict[str, Any]
    transparent: bool = False
    upstreams: list[UpstreamConfig] = Field(default_factory=list)

    @property
    def name(self) -> str:
        return self.policy.rpartition("/")[2]

    def to_json(self) -> str:
        return self.model_dump_json(by_alias=True)


def bundle_key(policy_name: str) -> str:
    """The ConfigMap key of a policy's bundle."""
    return f"{policy_name}.json"
