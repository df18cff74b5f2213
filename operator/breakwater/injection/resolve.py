"""From the policies of a namespace and a pod's labels to the one config that pod's sidecar runs.

The operator's side, on the models; the conflict rule, the ports and the hash are
`injection/conflicts.py`'s, which the sidecar's own resolution (`proxy/podsource.py`, on plain
dataclasses) shares.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass

from breakwater.api.bundle import PolicyBundle
from breakwater.api.constants import SIDECAR_ADMIN_PORT, SIDECAR_FORWARD_PROXY_PORT
from breakwater.api.sidecar import AdminConfig, ForwardProxyConfig, SidecarConfig
from breakwater.injection.conflicts import Conflict, choose, chosen_ports, selecting, served
from breakwater.injection.conflicts import config_hash as hash_of

__all__ = ["Conflict", "Resolution", "chosen_ports", "config_hash", "resolve", "selecting"]


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


def config_hash(config: SidecarConfig) -> str:
    """`conflicts.config_hash` of a config of the models."""
    decided = config.model_dump(by_alias=True, include={"forward_proxy", "upstreams"})
    return hash_of(decided["forwardProxy"], decided["upstreams"])


def resolve(
    labels: Mapping[str, str],
    bundles: Iterable[PolicyBundle],
    *,
    admin_port: int = SIDECAR_ADMIN_PORT,
    proxy_port: int = SIDECAR_FORWARD_PROXY_PORT,
    listen_address: str = "127.0.0.1",
) -> Resolution:
    """The config of a pod with these labels whose sidecar binds `admin_port` and `proxy_port`."""
    choice = choose(labels, bundles)
    kept = [upstream.model_copy(update={"policy": policy}) for policy, upstream in choice.kept]
    # What the policies decide, whatever ports this pod binds (port 0: no listener to collide with).
    decided = SidecarConfig(
        admin=AdminConfig(port=0),
        forward_proxy=ForwardProxyConfig(enabled=choice.transparent, port=0),
        upstreams=kept,
    )
    serving, lost = served(choice, admin_port, proxy_port)
    names = {upstream.name for _, upstream in serving}
    config = SidecarConfig(
        listen_address=listen_address,
        admin=AdminConfig(port=admin_port),
        forward_proxy=ForwardProxyConfig(enabled=choice.transparent, port=proxy_port),
        upstreams=[u for u in kept if u.name in names],
        config_hash=config_hash(decided),
    )
    return Resolution(config, choice.policies, (*choice.conflicts, *lost))
