"""The sidecar patch: which pods get the proxy, and what exactly is added to them.

Pure functions over plain dicts (the pod as the API server sends it), so the webhook, the tests and
`breakwater render-config` share one implementation.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from breakwater.api.constants import (
    ANNOTATION_CONFIG_HASH,
    ANNOTATION_INJECT,
    ANNOTATION_INJECTED,
    ANNOTATION_POLICIES,
    ANNOTATION_SIDECAR_PORTS,
    CONFIGMAP_NAME,
    LEGACY_ADMIN_PORT,
    LEGACY_FORWARD_PROXY_PORT,
    NEVER_INJECTED_NAMESPACES,
    SIDECAR_ADMIN_PORT,
    SIDECAR_FORWARD_PROXY_PORT,
    SIDECAR_NAME,
    TOKEN_AUDIENCE,
)

CONFIG_VOLUME = "breakwater-config"
PODINFO_VOLUME = "breakwater-podinfo"
TOKEN_VOLUME = "breakwater-token"
CONFIG_MOUNT = "/etc/breakwater/policies"
PODINFO_MOUNT = "/etc/breakwater/pod"
TOKEN_MOUNT = "/var/run/secrets/breakwater"


@dataclass(frozen=True)
class SidecarTemplate:
    """What the operator's settings decide about every sidecar (its ports are the plan's)."""

    image: str
    image_pull_policy: str = "IfNotPresent"
    resources: Mapping[str, Any] = field(default_factory=dict)
    report_url: str | None = None
    report_ca: str = ""  # PEM of the CA that signed the report endpoint's certificate (public)
    run_as_user: int = 65532


@dataclass(frozen=True)
class InjectionPlan:
    """What one pod gets: the resolved upstreams and the policies they came from."""

    policies: tuple[str, ...]
    listen_ports: tuple[tuple[str, int], ...]  # (upstream name, local port)
    transparent: bool
    config_hash: str
    admin_port: int = SIDECAR_ADMIN_PORT
    proxy_port: int = SIDECAR_FORWARD_PROXY_PORT


def skip_reason(pod: Mapping[str, Any], namespace: str, *, operator_namespace: str) -> str | None:
    """Why this pod is never considered for injection, whatever selects it, or None when it may be.

    (What a selected pod cannot carry — hostNetwork, a listen-port clash — is decided with the
    policies, by `controller.admission.decide`, and recorded on the pod.)
    """
    meta = pod.get("metadata") or {}
    annotations = meta.get("annotations") or {}
    if namespace in NEVER_INJECTED_NAMESPACES:
        return f"namespace {namespace} is never injected"
    if namespace == operator_namespace:
        return "the operator's own namespace is never injected"
    if str(annotations.get(ANNOTATION_INJECT, "")).lower() == "false":
        return f"opted out by annotation {ANNOTATION_INJECT}=false"
    if annotations.get(ANNOTATION_INJECTED) == "true" or sidecar_of(pod) is not None:
        return "already injected"
    return None


def sidecar_of(pod: Mapping[str, Any]) -> dict[str, Any] | None:
    """The injected proxy container of a pod spec: a native sidecar (an init container), or a regular
    container in pods injected before sidecars became native."""
    spec = pod.get("spec") or {}
    for container in [*(spec.get("initContainers") or ()), *(spec.get("containers") or ())]:
        if container.get("name") == SIDECAR_NAME:
            return dict(container)
    return None


def env_name(upstream: str) -> str:
    """`BREAKWATER_<UPSTREAM>_URL`, with the upstream name upper-cased and non-alphanumerics as `_`."""
    return f"BREAKWATER_{re.sub(r'[^A-Za-z0-9]', '_', upstream).upper()}_URL"


def ports_annotation(admin_port: int, proxy_port: int) -> str:
    return f"admin={admin_port},proxy={proxy_port}"


def parse_ports_annotation(value: str) -> tuple[int, int] | None:
    """(admin, proxy) from `ports_annotation`'s text, or None when it is not that."""
    fields = dict(part.partition("=")[::2] for part in value.split(","))
    admin, proxy = fields.get("admin", ""), fields.get("proxy", "")
    if not (admin.isdigit() and proxy.isdigit()):
        return None
    return int(admin), int(proxy)


def sidecar_ports(pod: Mapping[str, Any]) -> tuple[int, int]:
    """The (admin, forward-proxy) ports an injected pod's sidecar binds, read from the pod itself: the
    container's arguments (what the kubelet runs), else the annotation; a pod injected before either
    named them binds the legacy ports (15020, 15080)."""
    args = [str(a) for a in (sidecar_of(pod) or {}).get("args") or ()]
    annotations = (pod.get("metadata") or {}).get("annotations") or {}
    noted = parse_ports_annotation(str(annotations.get(ANNOTATION_SIDECAR_PORTS, "")))
    admin, proxy = noted or (LEGACY_ADMIN_PORT, LEGACY_FORWARD_PROXY_PORT)

    def arg(flag: str, default: int) -> int:
        for i, value in enumerate(args):
            if value == flag and i + 1 < len(args) and args[i + 1].isdigit():
                return int(args[i + 1])
            if value.startswith(flag + "=") and value[len(flag) + 1 :].isdigit():
                return int(value[len(flag) + 1 :])
        return default

    return arg("--admin-port", admin), arg("--proxy-port", proxy)


def sidecar_container(template: SidecarTemplate, plan: InjectionPlan) -> dict[str, Any]:
    admin = {"name": "bw-admin", "containerPort": plan.admin_port, "protocol": "TCP"}
    ports: list[dict[str, Any]] = [admin]
    if plan.transparent:
        ports.append({"name": "bw-proxy", "containerPort": plan.proxy_port, "protocol": "TCP"})
    ports += [
        {"name": f"bw-{i}", "containerPort": port, "protocol": "TCP"}
        for i, (_, port) in enumerate(plan.listen_ports)
    ]
    env: list[dict[str, Any]] = [
        {"name": "POD_NAME", "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}},
        {"name": "POD_NAMESPACE", "valueFrom": {"fieldRef": {"fieldPath": "metadata.namespace"}}},
        {"name": "POD_UID", "valueFrom": {"fieldRef": {"fieldPath": "metadata.uid"}}},
        {"name": "BREAKWATER_TOKEN_FILE", "value": f"{TOKEN_MOUNT}/token"},
    ]
    if template.report_url:
        env.append({"name": "BREAKWATER_REPORT_URL", "value": template.report_url})
    if template.report_ca:
        env.append({"name": "BREAKWATER_REPORT_CA", "value": template.report_ca})
    probe = {"httpGet": {"path": "/healthz", "port": "bw-admin"}, "periodSeconds": 10, "timeoutSeconds": 2}
    ready = {"httpGet": {"path": "/readyz", "port": "bw-admin"}, "timeoutSeconds": 2}
    return {
        "name": SIDECAR_NAME,
        "image": template.image,
        "imagePullPolicy": template.image_pull_policy,
        # A native sidecar: the kubelet starts the app containers only once the startup probe passes
        # (the listeners are bound when /readyz answers 200), stops the proxy after the app on
        # shutdown, and does not wait for it to exit before a Job's pod completes.
        "restartPolicy": "Always",
        "args": [
            "proxy",
            "--policies-dir",
            CONFIG_MOUNT,
            "--pod-labels",
            f"{PODINFO_MOUNT}/labels",
            "--admin-port",
            str(plan.admin_port),
            "--proxy-port",
            str(plan.proxy_port),
            "--log-format",
            "json",
        ],
        "ports": ports,
        "env": env,
        "resources": dict(template.resources),
        # Polled every second for up to a minute: the app waits for it, so a coarse period would add
        # its whole length to every pod's start.
        "startupProbe": {**ready, "periodSeconds": 1, "failureThreshold": 60},
        "livenessProbe": probe,
        "readinessProbe": {**ready, "periodSeconds": 5},
        "securityContext": {
            "runAsNonRoot": True,
            "runAsUser": template.run_as_user,
            "readOnlyRootFilesystem": True,
            "allowPrivilegeEscalation": False,
            "capabilities": {"drop": ["ALL"]},
            "seccompProfile": {"type": "RuntimeDefault"},
        },
        "volumeMounts": [
            {"name": CONFIG_VOLUME, "mountPath": CONFIG_MOUNT, "readOnly": True},
            {"name": PODINFO_VOLUME, "mountPath": PODINFO_MOUNT, "readOnly": True},
            {"name": TOKEN_VOLUME, "mountPath": TOKEN_MOUNT, "readOnly": True},
        ],
    }


def volumes() -> list[dict[str, Any]]:
    return [
        # optional: a pod created before the operator wrote the namespace's ConfigMap still starts
        {"name": CONFIG_VOLUME, "configMap": {"name": CONFIGMAP_NAME, "optional": True}},
        {
            "name": PODINFO_VOLUME,
            "downwardAPI": {"items": [{"path": "labels", "fieldRef": {"fieldPath": "metadata.labels"}}]},
        },
        {
            "name": TOKEN_VOLUME,
            "projected": {
                "sources": [
                    {
                        "serviceAccountToken": {
                            "audience": TOKEN_AUDIENCE,
                            "expirationSeconds": 3600,
                            "path": "token",
                        }
                    }
                ]
            },
        },
    ]


def app_env(template: SidecarTemplate, plan: InjectionPlan) -> list[dict[str, str]]:
    env = [{"name": env_name(name), "value": f"http://127.0.0.1:{port}"} for name, port in plan.listen_ports]
    if plan.transparent:
        proxy = f"http://127.0.0.1:{plan.proxy_port}"
        no_proxy = "localhost,127.0.0.1,::1"
        env += [
            {"name": "HTTP_PROXY", "value": proxy},
            {"name": "http_proxy", "value": proxy},
            {"name": "NO_PROXY", "value": no_proxy},
            {"name": "no_proxy", "value": no_proxy},
        ]
    return env


def inject(pod: dict[str, Any], *, template: SidecarTemplate, plan: InjectionPlan) -> None:
    """Add the sidecar, its volumes, the app containers' env and the annotations to `pod` in place.

    Env vars the app already sets win over ours: the user's explicit choice is never overwritten.
    """
    spec = pod.setdefault("spec", {})
    containers: list[dict[str, Any]] = spec.setdefault("containers", [])
    for container in containers:
        existing = {e.get("name") for e in container.get("env") or ()}
        additions = [e for e in app_env(template, plan) if e["name"] not in existing]
        if additions:
            container["env"] = [*(container.get("env") or []), *additions]
    # First of the init containers: any later init container may already call through the proxy.
    spec.setdefault("initContainers", []).insert(0, sidecar_container(template, plan))
    present = {v.get("name") for v in spec.get("volumes") or ()}
    spec["volumes"] = [*(spec.get("volumes") or []), *(v for v in volumes() if v["name"] not in present)]
    annotations = pod.setdefault("metadata", {}).setdefault("annotations", {})
    annotations[ANNOTATION_INJECTED] = "true"
    annotations[ANNOTATION_POLICIES] = ",".join(plan.policies)
    annotations[ANNOTATION_CONFIG_HASH] = plan.config_hash
    annotations[ANNOTATION_SIDECAR_PORTS] = ports_annotation(plan.admin_port, plan.proxy_port)


def listen_ports_in_use(pod: Mapping[str, Any]) -> set[int]:
    """Container ports the app already declares: an upstream listener must not collide with them."""
    spec = pod.get("spec") or {}
    return {
        int(p["containerPort"])
        for c in [*(spec.get("initContainers") or ()), *(spec.get("containers") or ())]
        for p in c.get("ports") or ()
        if "containerPort" in p
    }


def plan_summary(plan: InjectionPlan) -> Sequence[str]:
    return [f"{name}=127.0.0.1:{port}" for name, port in plan.listen_ports]
