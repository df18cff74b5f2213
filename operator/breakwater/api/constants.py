"""Names of the CircuitBreakerPolicy resource: the one place other packages take them from."""

from __future__ import annotations

from typing import Final

GROUP: Final = "breakwater.dev"
VERSION: Final = "v1alpha1"
API_VERSION: Final = f"{GROUP}/{VERSION}"

KIND: Final = "CircuitBreakerPolicy"
LIST_KIND: Final = "CircuitBreakerPolicyList"
PLURAL: Final = "circuitbreakerpolicies"
SINGULAR: Final = "circuitbreakerpolicy"
SHORT_NAMES: Final = ("cbp",)
CATEGORIES: Final = ("breakwater",)
CRD_NAME: Final = f"{PLURAL}.{GROUP}"

# Condition types written to status.conditions, in the order they are written. Accepted and Ready are
# "normal-true" (True is the healthy state); Conflict, CircuitOpen and Degraded are "abnormal-true"
# (True means something needs attention), as Kubernetes' own conditions mix both (Ready, DiskPressure).
CONDITION_ACCEPTED: Final = "Accepted"
"""The spec is valid and the sidecar configuration was rendered from it."""
CONDITION_READY: Final = "Ready"
"""Every selected pod is injected and reports the current configuration."""
CONDITION_CONFLICT: Final = "Conflict"
"""An older policy of the namespace claims one of this policy's upstreams for some pods."""
CONDITION_CIRCUIT_OPEN: Final = "CircuitOpen"
"""At least one breaker of this policy is open (or would be, in Observe mode)."""
CONDITION_DEGRADED: Final = "Degraded"
"""Some upstream is failing: open, half-open or (Observe mode) would be open."""
CONDITION_PORT_CONFLICT: Final = "PortConflict"
"""A listenPort collides, on some selected pods, with a port of the app, of its mesh or of the sidecar."""
CONDITION_OVERRIDE_EXPIRED: Final = "OverrideExpired"
"""spec.override has ended (or had already ended when it was applied): it does nothing now."""
HEALTHY_WHEN: Final = {
    CONDITION_ACCEPTED: True,
    CONDITION_READY: True,
    CONDITION_CONFLICT: False,
    CONDITION_CIRCUIT_OPEN: False,
    CONDITION_DEGRADED: False,
    CONDITION_PORT_CONFLICT: False,
    CONDITION_OVERRIDE_EXPIRED: False,
}
"""Each condition type's polarity: the status it has when all is well."""

# Ports of the sidecar itself. The defaults sit outside every mesh's reserved ranges (below) and the
# usual app ports; the operator's --sidecar-admin-port/--sidecar-proxy-port (chart sidecar.adminPort,
# sidecar.proxyPort) replace them, a policy's spec.sidecar replaces those for the pods it injects.
SIDECAR_ADMIN_PORT: Final = 15200
"""The sidecar's admin listener by default (probes, /stats, /metrics)."""
SIDECAR_FORWARD_PROXY_PORT: Final = 15201
"""The sidecar's HTTP forward-proxy listener by default (transparent mode, HTTP_PROXY)."""
RESERVED_LISTEN_PORTS: Final = (SIDECAR_ADMIN_PORT, SIDECAR_FORWARD_PROXY_PORT)
LEGACY_ADMIN_PORT: Final = 15020
"""The admin port of every sidecar injected before the ports were configurable (no ports annotation)."""
LEGACY_FORWARD_PROXY_PORT: Final = 15080
MESH_PORT_RANGES: Final = {"Istio": (15000, 15090), "Linkerd": (4140, 4191)}
"""Ports a mesh's own proxy binds in every meshed pod (inclusive): a listener there cannot bind."""

MAX_UPSTREAMS: Final = 32
"""Upper bound of spec.upstreams (bounded so the API server can cost the CEL rules)."""

# The contract between the webhook, the pods it rewrites, the sidecars and the status.
SIDECAR_NAME: Final = "breakwater-proxy"
"""The injected container."""
CONFIGMAP_NAME: Final = "breakwater-sidecar-config"
"""The per-namespace ConfigMap of the policies' bundles (one key per policy), mounted by every sidecar."""
HISTORY_CONFIGMAP_NAME: Final = "breakwater-adaptive-history"
"""The per-namespace ConfigMap of the policies' tuning histories (one key per policy), mounted by nothing."""
MAX_POLICY_NAME_LENGTH: Final = 253 - len(".json")
"""A policy's key in those ConfigMaps is `<name>.json`, and a ConfigMap key has at most 253 characters."""
TOKEN_AUDIENCE: Final = "breakwater"
"""The audience of the projected token a sidecar opens its report session with."""
NAMESPACE_LABEL: Final = f"{GROUP}/injection"
"""Set to "enabled" on a namespace: its pods are considered for injection."""
NEVER_INJECTED_NAMESPACES: Final = frozenset({"kube-system", "kube-public", "kube-node-lease"})
ANNOTATION_INJECT: Final = f"{GROUP}/inject"
"""Set to "false" on a pod: it is never injected (and never counted as selected)."""
ANNOTATION_INJECTED: Final = f"{GROUP}/injected"
"""Set by the webhook on a pod it injected ("true")."""
ANNOTATION_POLICIES: Final = f"{GROUP}/policies"
"""Set by the webhook: the policies (namespace/name, comma-separated) the sidecar was injected for."""
ANNOTATION_CONFIG_HASH: Final = f"{GROUP}/config-hash"
"""Set by the webhook: the config hash the pod's sidecar should run."""
ANNOTATION_SIDECAR_PORTS: Final = f"{GROUP}/sidecar-ports"
"""Set by the webhook: the ports the pod's sidecar binds, "admin=15200,proxy=15201" (absent on pods
injected before it existed: those bind LEGACY_ADMIN_PORT and LEGACY_FORWARD_PROXY_PORT)."""
ANNOTATION_NOT_INJECTED: Final = f"{GROUP}/not-injected"
"""Set by the webhook on a selected pod that cannot carry the sidecar: "<Reason>: <detail>"."""
SKIP_HOST_NETWORK: Final = "HostNetwork"
SKIP_LISTEN_PORT_CLASH: Final = "ListenPortClash"
SKIP_MESH_PORT_CLASH: Final = "MeshPortClash"
