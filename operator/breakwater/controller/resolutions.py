"""What each pod should run, memoized per (namespace, bundles version, labels).

Pods of one workload share their labels, so a fleet of thousands resolves a handful of times per policy
change instead of once per report and once per status refresh. Only the verdict is kept (the config
hash and the conflicts): the config itself is resolved again on the rare fetch that needs it.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

from breakwater.api.bundle import PolicyBundle
from breakwater.api.sidecar import SidecarConfig
from breakwater.controller.state import BundleCache
from breakwater.injection.resolve import Conflict, Resolution, resolve

Labels = tuple[tuple[str, str], ...]  # sorted (key, value) pairs


@dataclass(frozen=True, slots=True)
class Verdict:
    config_hash: str  # what a pod with these labels should run
    conflicts: tuple[Conflict, ...]


@dataclass
class Resolutions:
    bundles: BundleCache
    admin_port: int
    proxy_port: int
    _memo: dict[str, tuple[int, dict[Labels, Verdict]]] = field(default_factory=dict)

    def cached(self, namespace: str, labels: Labels) -> Verdict | None:
        entry = self._memo.get(namespace)
        if entry is None or entry[0] != self.bundles.version(namespace):
            return None
        return entry[1].get(labels)

    def verdict(self, namespace: str, labels: Labels, bundles: Mapping[str, PolicyBundle]) -> Verdict:
        """Resolve against `bundles`, which the caller just read from the cache (so of its version)."""
        version = self.bundles.version(namespace)
        entry = self._memo.get(namespace)
        if entry is None or entry[0] != version:
            entry = (version, {})
            self._memo[namespace] = entry
        found = entry[1].get(labels)
        if found is None:
            resolution = self._resolve(labels, bundles)
            found = Verdict(resolution.config_hash, resolution.conflicts)
            entry[1][labels] = found
        return found

    async def get(self, namespace: str, labels: Labels) -> Verdict:
        found = self.cached(namespace, labels)
        if found is not None:
            return found
        return self.verdict(namespace, labels, await self.bundles.get(namespace))

    async def config(self, namespace: str, labels: Labels) -> SidecarConfig:
        """The whole config (for a sidecar's fetch): not memoized."""
        return self._resolve(labels, await self.bundles.get(namespace)).config

    def _resolve(self, labels: Labels, bundles: Mapping[str, PolicyBundle]) -> Resolution:
        return resolve(dict(labels), bundles.values(), admin_port=self.admin_port, proxy_port=self.proxy_port)
