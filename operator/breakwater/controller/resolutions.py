"""What each pod should run, memoized per (namespace, bundles version, labels).

Pods of one workload share their labels, so a fleet of thousands resolves a handful of times per policy
change instead of once per report and once per status refresh.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

from breakwater.api.bundle import PolicyBundle
from breakwater.controller.state import BundleCache
from breakwater.injection.resolve import Resolution, resolve

Labels = tuple[tuple[str, str], ...]  # sorted (key, value) pairs


@dataclass
class Resolutions:
    bundles: BundleCache
    admin_port: int
    proxy_port: int
    _memo: dict[str, tuple[int, dict[Labels, Resolution]]] = field(default_factory=dict)

    def cached(self, namespace: str, labels: Labels) -> Resolution | None:
        entry = self._memo.get(namespace)
        if entry is None or entry[0] != self.bundles.version(namespace):
            return None
        return entry[1].get(labels)

    def resolve(self, namespace: str, labels: Labels, bundles: Mapping[str, PolicyBundle]) -> Resolution:
        """Resolve against `bundles`, which the caller just read from the cache (so of its version)."""
        version = self.bundles.version(namespace)
        entry = self._memo.get(namespace)
        if entry is None or entry[0] != version:
            entry = (version, {})
            self._memo[namespace] = entry
        found = entry[1].get(labels)
        if found is None:
            found = resolve(
                dict(labels), bundles.values(), admin_port=self.admin_port, proxy_port=self.proxy_port
            )
            entry[1][labels] = found
        return found

    async def get(self, namespace: str, labels: Labels) -> Resolution:
        found = self.cached(namespace, labels)
        if found is not None:
            return found
        return self.resolve(namespace, labels, await self.bundles.get(namespace))
