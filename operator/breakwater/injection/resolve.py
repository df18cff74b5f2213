"""From the policies of a namespace and a pod's labels to the one config that pod's sidecar runs.

Conflict rule (deterministic, documented in docs/design.md): policies are ordered by creation time,
then by name; walking that order, an upstream is kept unless an earlier policy already claimed the same
upstream name, the same host:port, or the same listen port. The later policy loses that upstream only
(its other upstreams still apply) and gets a `Conflict` condition naming the winner.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

from breakwater.api.bundle import PolicyBundle
from breakwater.api.constants import SIDECAR_ADMIN_PORT, SIDECAR_FORWARD_PROXY_PORT
from breakwater.api.sidecar import AdminConfig, ForwardProxyConfig, SidecarConfig, UpstreamConfig
from breakwater.injection.selectors import matches


@dataclass(frozen=True)
class Conflict:
    loser: str  # namespace/name of the policy that lost the upstream
    winner: str
    upstream: str
    reason: str

    def message(self) -> str:
        return (
            f"upstream {self.upstream!r} is also claimed by {self.winner} ({self.reason}); {self.winner} wins"
        )


@dataclass(frozen=True)
class Resolution:
    config: SidecarConfig
    policies: tuple[str, ...]  # every policy that selects the pod, in precedence order
    conflicts: tuple[Conflict, ...]

    @property
    def config_hash(self) -> str:
        return self.config.config_hash

    @property
    def transparent(self) -> bool:
        return self.config.forward_proxy.enabled

    @property
    def listen_ports(self) -> tuple[tuple[str, int], ...]:
        return tuple((u.name, u.listen_port) for u in self.config.upstreams if u.listen_port)


def precedence(bundle: PolicyBundle) -> tuple[str, str]:
    return (bundle.created, bundle.policy)


def config_hash(config: SidecarConfig) -> str:
    """A digest of what the policies decide (upstreams, forward proxy), not of where the pod binds.

    The operator and each sidecar compute it independently; a sidecar that binds its pod's own
    address (or another admin port) still runs, and reports, the same hash.
    """
    decided = config.model_dump(by_alias=True, include={"forward_proxy", "upstreams"})
    decided["forwardProxy"].pop("port", None)
    canonical = json.dumps(decided, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(canonical.encode()).hexdigest()[:16]


def resolve(
    labels: Mapping[str, str],
    bundles: Iterable[PolicyBundle],
    *,
    admin_port: int = SIDECAR_ADMIN_PORT,
    proxy_port: int = SIDECAR_FORWARD_PROXY_PORT,
    listen_address: str = "127.0.0.1",
) -> Resolution:
    selecting = sorted((b for b in bundles if matches(b.selector, labels)), key=precedence)
    kept: list[UpstreamConfig] = []
    owners: dict[str, str] = {}
    by_name: dict[str, UpstreamConfig] = {}
    by_target: dict[tuple[str, int], UpstreamConfig] = {}
    by_port: dict[int, UpstreamConfig] = {}
    reserved = {admin_port, proxy_port}
    conflicts: list[Conflict] = []
    for bundle in selecting:
        for upstream in bundle.upstreams:
            clash: tuple[UpstreamConfig, str] | None = None
            if upstream.name in by_name:
                clash = (by_name[upstream.name], "same upstream name")
            elif (upstream.host, upstream.port) in by_target:
                clash = (
                    by_target[(upstream.host, upstream.port)],
                    f"same target {upstream.host}:{upstream.port}",
                )
            elif upstream.listen_port and upstream.listen_port in by_port:
                clash = (by_port[upstream.listen_port], f"same listenPort {upstream.listen_port}")
            if clash is not None:
                conflicts.append(Conflict(bundle.policy, owners[clash[0].name], upstream.name, clash[1]))
                continue
            if upstream.listen_port in reserved:
                conflicts.append(Conflict(bundle.policy, "the sidecar", upstream.name, "reserved port"))
                continue
            upstream = upstream.model_copy(update={"policy": bundle.policy})
            kept.append(upstream)
            owners[upstream.name] = bundle.policy
            by_name[upstream.name] = upstream
            by_target[(upstream.host, upstream.port)] = upstream
            if upstream.listen_port:
                by_port[upstream.listen_port] = upstream
    transparent = any(b.transparent for b in selecting)
    config = SidecarConfig(
        listen_address=listen_address,
        admin=AdminConfig(port=admin_port),
        forward_proxy=ForwardProxyConfig(enabled=transparent, port=proxy_port),
        upstreams=kept,
    )
    config = config.model_copy(update={"config_hash": config_hash(config)})
    return Resolution(config, tuple(b.policy for b in selecting), tuple(conflicts))
