"""From the policies of a namespace and a pod's labels to the one config that pod's sidecar runs.

Conflict rule (deterministic, documented in docs/design.md): policies are ordered by creation time,
then by name; walking that order, an upstream is kept unless an earlier policy already claimed the same
upstream name, the same host:port, or the same listen port. The later policy loses that upstream only
(its other upstreams still apply) and gets a `Conflict` condition naming the winner.

The sidecar's own ports are the pod's, not the policies' (fixed when the pod is injected): an
upstream whose listenPort is one of them is not served on that pod, but the config hash is computed
before that is decided, so the operator and a sidecar injected on other ports agree on it.
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
    def admin_port(self) -> int:
        return self.config.admin.port

    @property
    def proxy_port(self) -> int:
        return self.config.forward_proxy.port

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


def selecting(labels: Mapping[str, str], bundles: Iterable[PolicyBundle]) -> list[PolicyBundle]:
    """The bundles that select these labels, in precedence order."""
    return sorted((b for b in bundles if matches(b.selector, labels)), key=precedence)


def chosen_ports(
    labels: Mapping[str, str], bundles: Iterable[PolicyBundle], *, admin_port: int, proxy_port: int
) -> tuple[int, int]:
    """The sidecar ports a pod with these labels is injected with: those of the oldest selecting policy
    that sets spec.sidecar, the operator's settings given here for what it leaves unset. One policy
    decides both, so two policies cannot pick one port twice (each was checked with the operator's)."""
    for bundle in selecting(labels, bundles):
        if bundle.admin_port is not None or bundle.proxy_port is not None:
            return bundle.admin_port or admin_port, bundle.proxy_port or proxy_port
    return admin_port, proxy_port


def without_reserved(config: SidecarConfig, admin_port: int, proxy_port: int) -> SidecarConfig:
    """`config` without the upstreams whose listenPort is one of the sidecar's own ports (the hash
    stays: see the module's docstring)."""
    served = [u for u in config.upstreams if u.listen_port not in (admin_port, proxy_port)]
    if len(served) == len(config.upstreams):
        return config
    return config.model_copy(update={"upstreams": served})


def resolve(
    labels: Mapping[str, str],
    bundles: Iterable[PolicyBundle],
    *,
    admin_port: int = SIDECAR_ADMIN_PORT,
    proxy_port: int = SIDECAR_FORWARD_PROXY_PORT,
    listen_address: str = "127.0.0.1",
) -> Resolution:
    """The config of a pod with these labels whose sidecar binds `admin_port` and `proxy_port`."""
    ordered = selecting(labels, bundles)
    kept: list[UpstreamConfig] = []
    owners: dict[str, str] = {}
    by_name: dict[str, UpstreamConfig] = {}
    by_target: dict[tuple[str, int], UpstreamConfig] = {}
    by_port: dict[int, UpstreamConfig] = {}
    conflicts: list[Conflict] = []
    for bundle in ordered:
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
            upstream = upstream.model_copy(update={"policy": bundle.policy})
            kept.append(upstream)
            owners[upstream.name] = bundle.policy
            by_name[upstream.name] = upstream
            by_target[(upstream.host, upstream.port)] = upstream
            if upstream.listen_port:
                by_port[upstream.listen_port] = upstream
    transparent = any(b.transparent for b in ordered)
    # What the policies decide, whatever ports this pod binds (port 0: no listener to collide with).
    decided = SidecarConfig(
        admin=AdminConfig(port=0),
        forward_proxy=ForwardProxyConfig(enabled=transparent, port=0),
        upstreams=kept,
    )
    served = []
    for upstream in kept:
        if upstream.listen_port in (admin_port, proxy_port):
            conflicts.append(Conflict(owners[upstream.name], "the sidecar", upstream.name, "reserved port"))
        else:
            served.append(upstream)
    config = SidecarConfig(
        listen_address=listen_address,
        admin=AdminConfig(port=admin_port),
        forward_proxy=ForwardProxyConfig(enabled=transparent, port=proxy_port),
        upstreams=served,
        config_hash=config_hash(decided),
    )
    return Resolution(config, tuple(b.policy for b in ordered), tuple(conflicts))
