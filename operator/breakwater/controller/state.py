"""What the operator keeps in memory between handler calls: rendered bundles and reconcile outcomes.

Nothing here is the source of truth: the ConfigMaps and the policies are. After a restart, the resume
handlers and a cache miss (one GET of the namespace's ConfigMap) rebuild all of it.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from dataclasses import dataclass, field
from typing import Any

import pydantic

from breakwater.api.bundle import PolicyBundle
from breakwater.injection.pod import CONFIGMAP_NAME
from breakwater.k8s import configmaps

logger = logging.getLogger("breakwater.controller.state")


@dataclass(frozen=True)
class ReconcileOutcome:
    """The verdict of the last reconcile of one policy generation."""

    generation: int
    accepted: bool
    reason: str
    message: str


def parse_bundles(data: dict[str, str], *, namespace: str) -> dict[str, PolicyBundle]:
    bundles = {}
    for key, text in data.items():
        if not key.endswith(".json"):
            continue
        try:
            bundle = PolicyBundle.model_validate(json.loads(text))
        except (ValueError, pydantic.ValidationError) as exc:
            logger.warning(
                "ignoring unreadable bundle %s in ConfigMap %s/%s: %s", key, namespace, CONFIGMAP_NAME, exc
            )
            continue
        bundles[bundle.name] = bundle
    return bundles


@dataclass
class _Entry:
    bundles: dict[str, PolicyBundle]
    fetched_at: float


@dataclass
class BundleCache:
    """Per-namespace bundles: updated by our own writes, re-read from the ConfigMap after `ttl` seconds."""

    api: Any
    ttl: float = 5.0
    _entries: dict[str, _Entry] = field(default_factory=dict)
    _locks: dict[str, asyncio.Lock] = field(default_factory=dict)

    async def get(self, namespace: str) -> dict[str, PolicyBundle]:
        entry = self._entries.get(namespace)
        if entry is not None and time.monotonic() - entry.fetched_at < self.ttl:
            return entry.bundles
        lock = self._locks.setdefault(namespace, asyncio.Lock())
        async with lock:
            entry = self._entries.get(namespace)
            if entry is not None and time.monotonic() - entry.fetched_at < self.ttl:
                return entry.bundles
            data = await asyncio.to_thread(
                configmaps.read, self.api, namespace=namespace, name=CONFIGMAP_NAME
            )
            bundles = parse_bundles(data, namespace=namespace)
            self._entries[namespace] = _Entry(bundles, time.monotonic())
            return bundles

    def put(self, namespace: str, bundle: PolicyBundle) -> None:
        entry = self._entries.get(namespace)
        if entry is not None:
            entry.bundles = {**entry.bundles, bundle.name: bundle}

    def remove(self, namespace: str, name: str) -> None:
        entry = self._entries.get(namespace)
        if entry is not None:
            entry.bundles = {k: v for k, v in entry.bundles.items() if k != name}


@dataclass
class OperatorState:
    api: Any
    bundles: BundleCache
    outcomes: dict[tuple[str, str], ReconcileOutcome] = field(default_factory=dict)
