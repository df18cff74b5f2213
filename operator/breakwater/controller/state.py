"""What the operator keeps in memory between handler calls: rendered bundles and reconcile outcomes.

Nothing here is the source of truth: the ConfigMaps and the policies are. After a restart, the resume
handlers and a cache miss (one GET of the namespace's ConfigMap) rebuild all of it.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import pydantic

from breakwater.api.bundle import PolicyBundle
from breakwater.api.constants import CONFIGMAP_NAME
from breakwater.k8s import configmaps

logger = logging.getLogger(__name__)


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
    ttl: float = 30.0  # our own writes update it at once; this catches keys written by others
    _entries: dict[str, _Entry] = field(default_factory=dict)
    _locks: dict[str, asyncio.Lock] = field(default_factory=dict)
    _versions: dict[str, int] = field(default_factory=dict)
    _changed: dict[str, asyncio.Event] = field(default_factory=dict)
    listeners: list[Callable[[str], None]] = field(default_factory=list)  # called with a changed namespace
    # Every bundle this operator wrote (None: removed). The operator is the keys' only writer, so these
    # are authoritative; the ConfigMap read fills in the policies not reconciled yet (after a restart).
    _written: dict[str, dict[str, PolicyBundle | None]] = field(default_factory=dict)

    def version(self, namespace: str) -> int:
        return self._versions.get(namespace, 0)

    async def wait_change(self, namespace: str, version: int, *, within: float) -> None:
        """Return when the namespace's bundles changed after `version`, or after `within` seconds."""
        if self.version(namespace) != version or within <= 0:
            return
        event = self._changed.setdefault(namespace, asyncio.Event())
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(event.wait(), within)

    def _bump(self, namespace: str) -> None:
        self._versions[namespace] = self.version(namespace) + 1
        event = self._changed.pop(namespace, None)
        if event is not None:
            event.set()
        for listener in self.listeners:
            listener(namespace)

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
            # Our own writes win over what the read returned: a policy reconciled while the read was in
            # flight is in `_written` but maybe not in `data` (and a pod created meanwhile must see it).
            for name, written in self._written.get(namespace, {}).items():
                if written is None:
                    bundles.pop(name, None)
                else:
                    bundles[name] = written
            previous = self._entries.get(namespace)
            self._entries[namespace] = _Entry(bundles, time.monotonic())
            if previous is not None and previous.bundles != bundles:
                self._bump(namespace)  # changed behind our back (another replica, a hand edit)
            return bundles

    def put(self, namespace: str, bundle: PolicyBundle) -> None:
        self._written.setdefault(namespace, {})[bundle.name] = bundle
        entry = self._entries.get(namespace)
        if entry is not None:
            if entry.bundles.get(bundle.name) == bundle:
                return
            entry.bundles = {**entry.bundles, bundle.name: bundle}
        self._bump(namespace)

    def remove(self, namespace: str, name: str) -> None:
        self._written.setdefault(namespace, {})[name] = None
        entry = self._entries.get(namespace)
        if entry is not None:
            entry.bundles = {k: v for k, v in entry.bundles.items() if k != name}
        self._bump(namespace)


@dataclass
class EventThrottle:
    """A token bucket per policy and upstream: a recovery cycle (Open, HalfOpen, Closed) is told in full,
    a flapping upstream gets one Event per `refill` seconds, and the next Event counts what it skipped."""

    burst: int = 6
    refill: float = 20.0
    _buckets: dict[tuple[str, str, str], tuple[float, float]] = field(default_factory=dict)
    _skipped: dict[tuple[str, str, str], int] = field(default_factory=dict)

    def admit(self, key: tuple[str, str, str]) -> tuple[bool, int]:
        now = time.monotonic()
        tokens, since = self._buckets.get(key, (float(self.burst), now))
        tokens = min(float(self.burst), tokens + (now - since) / self.refill)
        if tokens < 1:
            self._buckets[key] = (tokens, now)
            self._skipped[key] = self._skipped.get(key, 0) + 1
            return False, 0
        self._buckets[key] = (tokens - 1, now)
        return True, self._skipped.pop(key, 0)


@dataclass
class OperatorState:
    api: Any
    bundles: BundleCache
    outcomes: dict[tuple[str, str], ReconcileOutcome] = field(default_factory=dict)
    started_at: float = field(default_factory=time.monotonic)
    ca_pem: bytes = b""
    last_write: dict[tuple[str, str], float] = field(default_factory=dict)
    events: EventThrottle = field(default_factory=EventThrottle)
    clocks: dict[tuple[str, str], Any] = field(default_factory=dict)
