"""Which upstreams of the policies selecting a pod it runs, and the config hash of what they decide.

Conflict rule (deterministic, documented in docs/design.md): policies are ordered by creation time,
then by name; walking that order, an upstream is kept unless an earlier policy already claimed the same
upstream name, the same host:port, or the same listen port. The later policy loses that upstream only
(its other upstreams still apply) and gets a `Conflict` condition naming the winner.

The sidecar's own ports are the pod's, not the policies' (fixed when the pod is injected): an
upstream whose listenPort is one of them is not served on that pod, but the config hash is computed
before that is decided, so the operator and a sidecar injected on other ports agree on it.

Written once for both representations of a bundle: the operator's models (`injection/resolve.py`)
and the sidecar's plain dataclasses (`proxy/podsource.py`), so both pick the same upstreams and
compute the same hash.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Generic, Protocol, TypeVar

from breakwater.injection.selectors import matches

__all__ = ["Choice", "Conflict", "choose", "chosen_ports", "config_hash", "selecting", "served"]


class UpstreamLike(Protocol):
    @property
    def name(self) -> str: ...
    @property
    def host(self) -> str: ...
    @property
    def port(self) -> int: ...
    @property
    def listen_port(self) -> int | None: ...


U = TypeVar("U", bound=UpstreamLike)
U_co = TypeVar("U_co", bound=UpstreamLike, covariant=True)


class BundleLike(Protocol[U_co]):
    @property
    def policy(self) -> str: ...
    @property
    def created(self) -> str: ...
    @property
    def selector(self) -> dict[str, Any]: ...
    @property
    def transparent(self) -> bool: ...
    @property
    def upstreams(self) -> Sequence[U_co]: ...
    @property
    def admin_port(self) -> int | None: ...
    @property
    def proxy_port(self) -> int | None: ...


B = TypeVar("B", bound=BundleLike[Any])


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
class Choice(Generic[U]):
    kept: tuple[tuple[str, U], ...]  # (policy, upstream) in precedence order
    policies: tuple[str, ...]  # every policy that selects the pod, in precedence order
    conflicts: tuple[Conflict, ...]
    transparent: bool


def selecting(labels: Mapping[str, str], bundles: Iterable[B]) -> list[B]:
    """The bundles that select these labels, in precedence order."""
    return sorted((b for b in bundles if matches(b.selector, labels)), key=lambda b: (b.created, b.policy))


def chosen_ports(
    labels: Mapping[str, str], bundles: Iterable[BundleLike[Any]], *, admin_port: int, proxy_port: int
) -> tuple[int, int]:
    """The sidecar ports a pod with these labels is injected with: those of the oldest selecting policy
    that sets spec.sidecar, the operator's settings given here for what it leaves unset. One policy
    decides both, so two policies cannot pick one port twice (each was checked with the operator's)."""
    for bundle in selecting(labels, bundles):
        if bundle.admin_port is not None or bundle.proxy_port is not None:
            return bundle.admin_port or admin_port, bundle.proxy_port or proxy_port
    return admin_port, proxy_port


def choose(labels: Mapping[str, str], bundles: Iterable[BundleLike[U]]) -> Choice[U]:
    """The upstreams the selecting policies decide, whatever ports the pod binds."""
    ordered = selecting(labels, bundles)
    kept: list[tuple[str, U]] = []
    owners: dict[str, str] = {}
    by_name: dict[str, U] = {}
    by_target: dict[tuple[str, int], U] = {}
    by_port: dict[int, U] = {}
    conflicts: list[Conflict] = []
    for bundle in ordered:
        for upstream in bundle.upstreams:
            clash: tuple[U, str] | None = None
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
            kept.append((bundle.policy, upstream))
            owners[upstream.name] = bundle.policy
            by_name[upstream.name] = upstream
            by_target[(upstream.host, upstream.port)] = upstream
            if upstream.listen_port:
                by_port[upstream.listen_port] = upstream
    return Choice(
        tuple(kept),
        tuple(b.policy for b in ordered),
        tuple(conflicts),
        any(b.transparent for b in ordered),
    )


def served(choice: Choice[U], admin_port: int, proxy_port: int) -> tuple[list[tuple[str, U]], list[Conflict]]:
    """The kept upstreams a sidecar on these ports serves, and a conflict for each one whose listenPort
    is one of them."""
    serving: list[tuple[str, U]] = []
    lost: list[Conflict] = []
    for policy, upstream in choice.kept:
        if upstream.listen_port in (admin_port, proxy_port):
            lost.append(Conflict(policy, "the sidecar", upstream.name, "reserved port"))
        else:
            serving.append((policy, upstream))
    return serving, lost


def config_hash(forward_proxy: Mapping[str, Any], upstreams: Sequence[Mapping[str, Any]]) -> str:
    """A digest of what the policies decide (upstreams, forward proxy), not of where the pod binds.

    Given the wire forms (camelCase dicts). The operator and each sidecar compute it independently; a
    sidecar that binds its pod's own address (or another admin port) still runs, and reports, the
    same hash.
    """
    decided = {
        "forwardProxy": {k: v for k, v in forward_proxy.items() if k != "port"},
        "upstreams": upstreams,
    }
    canonical = json.dumps(decided, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(canonical.encode()).hexdigest()[:16]
