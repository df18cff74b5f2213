"""What the operator keeps in memory between handler calls: rendered bundles and reconcile outcomes.

Nothing here is the source of truth: the ConfigMaps and the policies are. After a restart or a change
of leader, the ConfigMap watch and the resume handlers rebuild all of it.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import pydantic

from breakwater.api.bundle import PolicyBundle
from breakwater.api.constants import CONFIGMAP_NAME, SIDECAR_ADMIN_PORT, SIDECAR_FORWARD_PROXY_PORT
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


def configmap_bundles(configmap: Mapping[str, Any]) -> dict[str, PolicyBundle]:
    """The bundles of one watched ConfigMap (the watch's `convert`, run in its thread)."""
    namespace = str((configmap.get("metadata") or {}).get("namespace", ""))
    return parse_bundles(dict(configmap.get("data") or {}), namespace=namespace)


Bundles = dict[str, PolicyBundle]


@dataclass
class BundleCache:
    """Every namespace's bundles as its ConfigMap holds them, kept current by a watch of the
    ConfigMaps (a `listwatch.Sink`), with this replica's own writes on top until the watch shows them.

    Every replica keeps one (the webhook and the report channel answer from it); the leader writes the
    ConfigMaps and `put`s what it wrote, so a pod admitted a moment later already sees it. Before the
    watch has listed, `get` reads the ConfigMap itself.
    """

    api: Any
    sync_wait: float = 10.0  # how long `get` waits for the watch's first list before it reads itself
    synced: asyncio.Event = field(default_factory=asyncio.Event)
    listeners: list[Callable[[str], None]] = field(default_factory=list)  # called with a changed namespace
    _watched: dict[str, Bundles] = field(default_factory=dict)
    # Written by this replica, not yet seen by the watch (None: removed). The watch catches up within
    # milliseconds; until then a read must not lose the write.
    _written: dict[str, dict[str, PolicyBundle | None]] = field(default_factory=dict)
    _views: dict[str, Bundles] = field(default_factory=dict)  # watched + written, per namespace
    _versions: dict[str, int] = field(default_factory=dict)
    _changed: dict[str, asyncio.Event] = field(default_factory=dict)

    # -- readers -------------------------------------------------------------------------------------

    async def get(self, namespace: str) -> Bundles:
        if not self.synced.is_set():
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.synced.wait(), self.sync_wait)
        if self.synced.is_set():
            return self.current(namespace)
        data = await asyncio.to_thread(configmaps.read, self.api, namespace=namespace, name=CONFIGMAP_NAME)
        return self._overlay(parse_bundles(data, namespace=namespace), namespace)

    def current(self, namespace: str) -> Bundles:
        """The namespace's bundles as known now (watched and written)."""
        view = self._views.get(namespace)
        if view is None:
            view = self._views[namespace] = self._overlay(self._watched.get(namespace, {}), namespace)
        return view

    def version(self, namespace: str) -> int:
        return self._versions.get(namespace, 0)

    async def wait_change(self, namespace: str, version: int, *, within: float) -> None:
        """Return when the namespace's bundles changed after `version`, or after `within` seconds."""
        if self.version(namespace) != version or within <= 0:
            return
        event = self._changed.setdefault(namespace, asyncio.Event())
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(event.wait(), within)

    # -- the watch (listwatch.Sink) ------------------------------------------------------------------

    def replace(self, scope: str | None, items: dict[str, dict[str, Bundles]]) -> None:
        found = {ns: by_name.get(CONFIGMAP_NAME, {}) for ns, by_name in items.items()}
        namespaces = set(self._watched) | set(found) if scope is None else {scope}
        for namespace in namespaces:
            self._observe(namespace, found.get(namespace, {}))

    def apply(self, changes: Sequence[tuple[str, str, Bundles | None]]) -> None:
        for namespace, name, bundles in changes:
            if name == CONFIGMAP_NAME:
                self._observe(namespace, bundles or {})

    def mark_synced(self) -> None:
        self.synced.set()

    def _observe(self, namespace: str, bundles: Bundles) -> None:
        if bundles:
            self._watched[namespace] = bundles
        else:
            self._watched.pop(namespace, None)
        written = self._written.get(namespace)
        if written:
            for name, bundle in list(written.items()):
                if bundles.get(name) == bundle:  # the watch shows the write now (None: the removal)
                    del written[name]
            if not written:
                del self._written[namespace]
        self._refresh(namespace)

    # -- the leader's writes -------------------------------------------------------------------------

    def put(self, namespace: str, bundle: PolicyBundle) -> None:
        """This replica wrote `bundle` to the namespace's ConfigMap."""
        self._written.setdefault(namespace, {})[bundle.name] = bundle
        self._refresh(namespace)

    def remove(self, namespace: str, name: str) -> None:
        """This replica removed the policy's key from the namespace's ConfigMap."""
        self._written.setdefault(namespace, {})[name] = None
        self._refresh(namespace)

    def forget_writes(self) -> None:
        """No longer the writer (leadership moved): what the watch shows is all there is."""
        namespaces = list(self._written)
        self._written.clear()
        for namespace in namespaces:
            self._refresh(namespace)

    # -- internals -----------------------------------------------------------------------------------

    def _overlay(self, bundles: Bundles, namespace: str) -> Bundles:
        written = self._written.get(namespace)
        if not written:
            return bundles
        merged = dict(bundles)
        for name, bundle in written.items():
            if bundle is None:
                merged.pop(name, None)
            else:
                merged[name] = bundle
        return merged

    def _refresh(self, namespace: str) -> None:
        before = self._views.pop(namespace, None)
        if (before or {}) != self.current(namespace):
            self._versions[namespace] = self.version(namespace) + 1
            event = self._changed.pop(namespace, None)
            if event is not None:
                event.set()
            for listener in self.listeners:
                listener(namespace)
        if not self._views[namespace]:
            del self._views[namespace]


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
    last_write: dict[tuple[str, str], float] = field(default_factory=dict)
    events: EventThrottle = field(default_factory=EventThrottle)
    clocks: dict[tuple[str, str], Any] = field(default_factory=dict)
    adaptive: Any = None  # controller.adaptive.Adaptation: histories, tuner states, quorum holds
    expired_on_arrival: dict[tuple[str, str], int] = field(default_factory=dict)  # -> the generation
    sidecar_ports: tuple[int, int] = (SIDECAR_ADMIN_PORT, SIDECAR_FORWARD_PROXY_PORT)  # the operator's
