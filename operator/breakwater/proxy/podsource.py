"""The sidecar's own config, as an injected pod gets it: mounted policy bundles + its labels.

The operator writes every policy of the namespace into one ConfigMap, mounted as a directory; the
downward API mounts the pod's labels. This module resolves the two into the pod's `PlainSidecarConfig`
with the same function the operator uses (so both compute the same config hash), applies where this
pod binds, and re-resolves whenever either mount changes. Upstreams that disappear stay as
pass-through listeners (see `carry_over`).
"""

from __future__ import annotations

import asyncio
import dataclasses
import hashlib
import logging
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path

from breakwater.api.constants import SIDECAR_ADMIN_PORT, SIDECAR_FORWARD_PROXY_PORT
from breakwater.api.plain.bundle import BundleError, PlainPolicyBundle, parse_bundle
from breakwater.api.plain.sidecar import PlainAdminConfig, PlainForwardProxyConfig, PlainSidecarConfig
from breakwater.injection.conflicts import Conflict, choose, config_hash, served
from breakwater.injection.podinfo import PodInfoError, carry_over, parse_labels
from breakwater.proxy.sidecar import ConfigApplyError, Sidecar

log = logging.getLogger(__name__)


def read_bundles(directory: Path) -> tuple[list[PlainPolicyBundle], list[str]]:
    """Every readable bundle of a mounted ConfigMap directory, and one error line per unreadable one.

    Kubelet mounts a ConfigMap as symlinks into a `..data` directory; `*.json` skips those entries.
    """
    bundles, errors = [], []
    for path in sorted(directory.glob("*.json")):
        try:
            bundles.append(parse_bundle(path.read_bytes()))
        except (OSError, BundleError) as exc:
            errors.append(f"{path.name}: {exc}")
    return bundles, errors


def resolve(
    labels: Mapping[str, str], bundles: Iterable[PlainPolicyBundle], *, admin_port: int, proxy_port: int
) -> tuple[PlainSidecarConfig, tuple[Conflict, ...]]:
    """The pod's config, as `injection.resolve.resolve` computes it on the operator's side (same rule,
    same hash), and the conflicts it met."""
    choice = choose(labels, bundles)
    kept = tuple(dataclasses.replace(upstream, policy=policy) for policy, upstream in choice.kept)
    wire = PlainForwardProxyConfig(enabled=choice.transparent, port=0)
    decided = PlainSidecarConfig(forward_proxy=wire, upstreams=kept).to_dict()  # whatever ports the pod binds
    serving, lost = served(choice, admin_port, proxy_port)
    names = {upstream.name for _, upstream in serving}
    config = PlainSidecarConfig(
        admin=PlainAdminConfig(port=admin_port),
        forward_proxy=PlainForwardProxyConfig(enabled=choice.transparent, port=proxy_port),
        upstreams=tuple(u for u in kept if u.name in names),
        config_hash=config_hash(decided["forwardProxy"], decided["upstreams"]),
    )
    return config, (*choice.conflicts, *lost)


@dataclass(frozen=True)
class Binding:
    """Where this sidecar listens: decided by the pod, not by the policies (outside the config hash)."""

    listen_address: str = "127.0.0.1"
    admin_address: str = "0.0.0.0"
    admin_port: int = SIDECAR_ADMIN_PORT
    proxy_port: int = SIDECAR_FORWARD_PROXY_PORT

    def apply(self, config: PlainSidecarConfig) -> PlainSidecarConfig:
        """`config` bound here; an upstream whose listenPort is one of this sidecar's own ports (a
        config the operator resolved for other ports) is not served (the hash stays)."""
        ports = (self.admin_port, self.proxy_port)
        kept = tuple(u for u in config.upstreams if u.listen_port not in ports)
        for lost in config.upstreams:
            if lost.listen_port in ports:
                log.warning(
                    "upstream %s is not served: its listenPort is one of this sidecar's ports", lost.name
                )
        return config.replace(
            upstreams=kept,
            listen_address=self.listen_address,
            admin=PlainAdminConfig(port=self.admin_port, address=self.admin_address),
            forward_proxy=dataclasses.replace(config.forward_proxy, port=self.proxy_port),
        )


@dataclass
class PodConfigSource:
    policies_dir: Path
    labels_file: Path
    binding: Binding

    def fingerprint(self) -> str:
        digest = hashlib.sha256()
        for path in [self.labels_file, *sorted(self.policies_dir.glob("*.json"))]:
            try:
                digest.update(path.name.encode() + b"\0" + path.read_bytes() + b"\0")
            except OSError:
                digest.update(path.name.encode() + b"\0missing\0")
        return digest.hexdigest()

    def load(self, running: PlainSidecarConfig | None = None) -> PlainSidecarConfig:
        try:
            labels = parse_labels(self.labels_file.read_text())
        except OSError as exc:
            raise PodInfoError(f"{self.labels_file}: {exc.strerror or exc}") from exc
        bundles, errors = read_bundles(self.policies_dir)
        for error in errors:
            log.warning("skipping an unreadable policy bundle: %s", error)
        config, conflicts = resolve(
            labels, bundles, admin_port=self.binding.admin_port, proxy_port=self.binding.proxy_port
        )
        for conflict in conflicts:
            log.warning(
                "policy conflict: %s loses upstream %s: %s",
                conflict.loser,
                conflict.upstream,
                conflict.message(),
            )
        return self.binding.apply(carry_over(running, config))

    async def follow(self, sidecar: Sidecar, *, interval: float = 1.0) -> None:
        """Re-resolve whenever a mount changes (kubelet refreshes ConfigMap volumes about once a minute)."""
        seen = self.fingerprint()
        while True:
            await asyncio.sleep(interval)
            now = self.fingerprint()
            if now == seen:
                continue
            seen = now
            try:
                config = self.load(sidecar.config)
                if await sidecar.apply_config(config, source=str(self.policies_dir)):
                    log.info("mounted policies changed: running config %s", config.config_hash)
            except (PodInfoError, ConfigApplyError) as exc:
                sidecar.record_failure(str(self.policies_dir), str(exc))
                log.warning("keeping the running config: %s", exc)
