"""What the operator remembers of each pod: just enough to count selected, injected and current pods.

`facts()` reads pod *metadata* only (a PartialObjectMetadata body), so the pod watch never asks the API
server for specs or statuses; `PodIndex` keeps those facts per namespace, fed by `k8s.listwatch.ListWatch`.
At 10,000 pods a fact costs a few hundred bytes: the repeated strings (label keys and values, policy
names, config hashes) and the label and policy tuples themselves are shared between pods.
"""

from __future__ import annotations

import asyncio
import logging
import sys
from collections.abc import Callable, Collection, Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from breakwater.api.constants import (
    ANNOTATION_CONFIG_HASH,
    ANNOTATION_INJECT,
    ANNOTATION_INJECTED,
    ANNOTATION_NOT_INJECTED,
    ANNOTATION_POLICIES,
    ANNOTATION_SIDECAR_PORTS,
    LEGACY_ADMIN_PORT,
    LEGACY_FORWARD_PROXY_PORT,
)
from breakwater.injection.pod import parse_ports_annotation

logger = logging.getLogger(__name__)

Labels = tuple[tuple[str, str], ...]

_SHARED_MAX = 8192  # distinct label sets / policy lists remembered for sharing; cleared when exceeded
_label_sets: dict[Labels, Labels] = {}
_policy_lists: dict[str, tuple[str, ...]] = {}


@dataclass(frozen=True, slots=True)
class PodFacts:
    name: str
    uid: str
    labels: Labels
    injected: bool
    config_hash: str
    policies: tuple[str, ...]
    opted_out: bool = False
    not_injected: str = ""  # why the webhook could not inject a selected pod ("<Reason>: <detail>")
    sidecar_ports: tuple[int, int] = (LEGACY_ADMIN_PORT, LEGACY_FORWARD_PROXY_PORT)  # (admin, proxy)

    @property
    def label_map(self) -> dict[str, str]:
        return dict(self.labels)


def _shared_labels(raw: Mapping[str, Any] | None) -> Labels:
    if not raw:
        return ()
    labels = tuple(sorted((sys.intern(str(k)), sys.intern(str(v))) for k, v in raw.items()))
    shared = _label_sets.get(labels)
    if shared is None:
        if len(_label_sets) >= _SHARED_MAX:
            _label_sets.clear()
        shared = _label_sets.setdefault(labels, labels)
    return shared


def _shared_policies(raw: str) -> tuple[str, ...]:
    if not raw:
        return ()
    shared = _policy_lists.get(raw)
    if shared is None:
        if len(_policy_lists) >= _SHARED_MAX:
            _policy_lists.clear()
        shared = _policy_lists.setdefault(raw, tuple(sys.intern(p) for p in raw.split(",") if p))
    return shared


_LEGACY_PORTS = (LEGACY_ADMIN_PORT, LEGACY_FORWARD_PROXY_PORT)
_port_pairs: dict[tuple[int, int], tuple[int, int]] = {}


def _shared_ports(ports: tuple[int, int]) -> tuple[int, int]:
    if len(_port_pairs) >= _SHARED_MAX:
        _port_pairs.clear()
    return _port_pairs.setdefault(ports, ports)


def facts(body: Mapping[str, Any]) -> PodFacts | None:
    """The pod's facts, or None for pods that no longer count (being deleted, or finished).

    Works from metadata alone (`{"metadata": {...}}`): whether the pod carries the sidecar is the
    injection annotation the webhook sets. The pod watch leaves finished pods out by field selector;
    a full pod body that says Succeeded or Failed is left out here too.
    Opted-out pods are remembered but never count as selected: their owners chose to run unprotected.
    """
    meta = body.get("metadata") or {}
    if meta.get("deletionTimestamp"):
        return None
    status = body.get("status")
    if status and status.get("phase") in {"Succeeded", "Failed"}:
        return None
    annotations = meta.get("annotations") or {}
    # Pods injected before the annotation existed bind the legacy ports (no release could change them).
    ports = parse_ports_annotation(str(annotations.get(ANNOTATION_SIDECAR_PORTS, "")))
    return PodFacts(
        name=str(meta.get("name", "")),
        uid=str(meta.get("uid", "")),
        labels=_shared_labels(meta.get("labels")),
        injected=annotations.get(ANNOTATION_INJECTED) == "true",
        config_hash=sys.intern(str(annotations.get(ANNOTATION_CONFIG_HASH, ""))),
        policies=_shared_policies(str(annotations.get(ANNOTATION_POLICIES, ""))),
        opted_out=str(annotations.get(ANNOTATION_INJECT, "")).lower() == "false",
        not_injected=sys.intern(str(annotations.get(ANNOTATION_NOT_INJECTED, ""))),
        sidecar_ports=_shared_ports(ports) if ports else _LEGACY_PORTS,
    )


_NO_PODS: dict[str, PodFacts] = {}


class PodIndex:
    """The facts of every counted pod, by namespace and name. Lives on the event loop's thread.

    `ListWatch` (breakwater.k8s.listwatch) feeds it through `replace`, `apply` and `mark_synced`.
    """

    def __init__(self) -> None:
        self._pods: dict[str, dict[str, PodFacts]] = {}
        self.synced = asyncio.Event()  # set once every watched scope has been listed
        self.listeners: list[Callable[[str], None]] = []  # called with a namespace whose pods changed

    # -- reading ---------------------------------------------------------------------------------

    def get(self, namespace: str, name: str) -> PodFacts | None:
        return self._pods.get(namespace, _NO_PODS).get(name)

    def in_namespace(self, namespace: str) -> Collection[PodFacts]:
        """A live view of the namespace's pods (not a copy): do not await while iterating it."""
        return self._pods.get(namespace, _NO_PODS).values()

    def namespaces(self) -> Collection[str]:
        """Namespaces with at least one counted pod (a live view)."""
        return self._pods.keys()

    def __len__(self) -> int:
        return sum(len(pods) for pods in self._pods.values())

    # -- writing (ListWatch's sink) ---------------------------------------------------------------

    def replace(self, scope: str | None, pods: dict[str, dict[str, PodFacts]]) -> None:
        """A fresh list: the whole index (scope None) or one namespace's pods become exactly `pods`."""
        pods = {namespace: by_name for namespace, by_name in pods.items() if by_name}
        if scope is None:
            changed = {ns for ns in self._pods.keys() | pods.keys() if self._pods.get(ns) != pods.get(ns)}
            self._pods = pods
        else:
            new = pods.get(scope)
            changed = {scope} if self._pods.get(scope) != new else set()
            if new:
                self._pods[scope] = new
            else:
                self._pods.pop(scope, None)
        self._notify(changed)

    def apply(self, changes: Iterable[tuple[str, str, PodFacts | None]]) -> None:
        """Watch events in order: (namespace, name, facts), facts None for a pod that no longer counts."""
        changed: set[str] = set()
        for namespace, name, found in changes:
            pods = self._pods.get(namespace)
            if found is None:
                if pods is None or pods.pop(name, None) is None:
                    continue
                if not pods:
                    del self._pods[namespace]
            elif pods is None:
                self._pods[namespace] = {name: found}
            elif pods.get(name) != found:
                pods[name] = found
            else:
                continue
            changed.add(namespace)
        self._notify(changed)

    def mark_synced(self) -> None:
        self.synced.set()

    def _notify(self, namespaces: Iterable[str]) -> None:
        for namespace in namespaces:
            for listener in list(self.listeners):
                try:
                    listener(namespace)
                except Exception:
                    logger.exception("a pod index listener failed for namespace %s", namespace)
