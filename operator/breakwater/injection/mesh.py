"""Whether a pod belongs to a service mesh whose proxy binds ports inside it, and which.

Istio's sidecar (and, in ambient mode, ztunnel inside the pod's network namespace) binds ports of
15000-15090, Linkerd's proxy ports of 4140-4191: a Breakwater listener there cannot bind, so such a
pod is not injected and the policy says so. What is seen is the pod as admitted: the mesh's proxy
container (when the mesh's webhook ran first) or the labels and annotations that ask the mesh to
inject it. A mesh enabled on the namespace only (`istio-injection=enabled`, a namespace's
`linkerd.io/inject`) is not seen from the pod.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

from breakwater.api.constants import MESH_PORT_RANGES

_CONTAINERS = {"istio-proxy": "Istio", "linkerd-proxy": "Linkerd"}


def mesh_of(pod: Mapping[str, Any]) -> str | None:
    """The mesh (Istio, Linkerd) whose proxy binds ports inside this pod, or None."""
    meta = pod.get("metadata") or {}
    labels, annotations = meta.get("labels") or {}, meta.get("annotations") or {}
    spec = pod.get("spec") or {}
    for container in [*(spec.get("initContainers") or ()), *(spec.get("containers") or ())]:
        mesh = _CONTAINERS.get(str(container.get("name")))
        if mesh is not None:
            return mesh
    istio_inject = str(labels.get("sidecar.istio.io/inject", annotations.get("sidecar.istio.io/inject", "")))
    if istio_inject.lower() == "true" or labels.get("istio.io/dataplane-mode") == "ambient":
        return "Istio"
    if "istio.io/rev" in labels and istio_inject.lower() != "false":
        return "Istio"
    if str(annotations.get("linkerd.io/inject", "")).lower() in {"enabled", "ingress"}:
        return "Linkerd"
    return None


def in_mesh_range(mesh: str, ports: Iterable[tuple[str, int]]) -> list[tuple[str, int]]:
    """The (what, port) pairs whose port the mesh's proxy may bind."""
    low, high = MESH_PORT_RANGES[mesh]
    return [(what, port) for what, port in ports if low <= port <= high]
