"""Operator settings: one dataclass, filled from command-line flags with environment fallbacks.

Every flag has a BREAKWATER_* environment variable so the Helm chart can pass settings either way.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import re
import urllib.parse
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any

from breakwater.api.constants import SIDECAR_ADMIN_PORT, SIDECAR_FORWARD_PROXY_PORT
from breakwater.api.policy import is_namespace_name, is_object_name
from breakwater.errors import InvalidInput

DEFAULT_SIDECAR_RESOURCES: dict[str, Any] = {
    "requests": {"cpu": "20m", "memory": "48Mi"},
    "limits": {"memory": "128Mi"},
}


PULL_POLICIES = ("Always", "IfNotPresent", "Never")
_QUANTITY = re.compile(r"[+]?([0-9]+(\.[0-9]*)?|\.[0-9]+)([eE][-+]?[0-9]+|[numkMGTPE]|[KMGTPE]i)?")


class SettingsError(InvalidInput):
    """A setting has a value the operator cannot run with; the message names the flag."""


@dataclass(frozen=True)
class OperatorSettings:
    watch_namespaces: tuple[str, ...] = ()  # empty: every namespace
    operator_namespace: str = "breakwater-system"
    sidecar_image: str = "ghcr.io/breakwater-dev/breakwater:0.1.0"
    sidecar_image_pull_policy: str = "IfNotPresent"
    sidecar_resources: dict[str, Any] = field(default_factory=lambda: dict(DEFAULT_SIDECAR_RESOURCES))
    sidecar_admin_port: int = SIDECAR_ADMIN_PORT
    sidecar_proxy_port: int = SIDECAR_FORWARD_PROXY_PORT
    inject_all_namespaces: bool = False
    webhook_listen_host: str = "0.0.0.0"
    webhook_listen_port: int = 9443
    webhook_cert_dir: str | None = None
    webhook_secret: str | None = None  # "namespace/name": operator-managed, rotated certificate
    webhook_url: str | None = None  # dev and tests: the API server calls this URL
    webhook_service: str | None = None  # in-cluster: "namespace/name[:port]"
    webhook_configuration: str = "breakwater"
    webhook_manage: str = "full"  # full | ca-only | none
    webhook_failure_policy: str = "Ignore"
    webhook_timeout_seconds: int = 5
    health_listen: str | None = "0.0.0.0:8080"  # /healthz (liveness) and /readyz (readiness)
    metrics_listen: tuple[str, int] | None = None  # off unless asked: the chart serves 0.0.0.0:9090
    report_listen_host: str = "0.0.0.0"
    report_listen_port: int = 9444
    report_url: str | None = None  # how sidecars reach the report endpoint; default from the service
    report_advertise: str = ""  # HOST:PORT where the other replicas reach this one's report endpoint
    lease_seconds: float = 10.0  # a leader that stops renewing is replaced after this
    shutdown_delay_seconds: float = 0.0  # keep answering admissions this long after SIGTERM
    log_format: str = "text"  # text | json
    status_interval_seconds: float = 1.0
    stale_after_seconds: float = 30.0
    kubeconfig: str | None = None


def _env(name: str, default: str | None = None) -> str | None:
    return os.environ.get(f"BREAKWATER_{name}", default)


def _bool_env(name: str) -> bool:
    return (_env(name) or "").lower() in {"1", "true", "yes", "on"}


def _host_port(value: str, flag: str) -> tuple[str, int]:
    host, sep, port = value.rpartition(":")
    if not sep or not port.isdigit() or not 0 < int(port) < 65536:
        raise SettingsError(f"{flag}: expected HOST:PORT, got {value!r}")
    return host or "0.0.0.0", int(port)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add = parser.add_argument
    add(
        "--namespace",
        action="append",
        dest="namespaces",
        default=None,
        help="watch only this namespace (repeatable); default: all (env BREAKWATER_WATCH_NAMESPACES)",
    )
    add("--all-namespaces", action="store_true", help="watch every namespace (the default)")
    add(
        "--kubeconfig",
        default=None,
        help="kubeconfig file; default: the in-cluster service account, else $KUBECONFIG (its files merged "
        "as kubectl does) or ~/.kube/config",
    )
    add(
        "--operator-namespace",
        default=os.environ.get("POD_NAMESPACE", _env("OPERATOR_NAMESPACE")),
        help="the operator's own namespace: its Lease, and never injected (default $POD_NAMESPACE, "
        "else breakwater-system)",
    )
    add(
        "--sidecar-image",
        default=_env("SIDECAR_IMAGE"),
        help="the injected sidecar's image (default this release's)",
    )
    add(
        "--sidecar-image-pull-policy",
        choices=PULL_POLICIES,
        default=_env("SIDECAR_IMAGE_PULL_POLICY"),
        help="the injected container's imagePullPolicy (default IfNotPresent)",
    )
    add(
        "--sidecar-resources",
        default=_env("SIDECAR_RESOURCES"),
        help="JSON ResourceRequirements of the sidecar",
    )
    add(
        "--sidecar-admin-port",
        type=int,
        default=_env("SIDECAR_ADMIN_PORT") or str(SIDECAR_ADMIN_PORT),
        help=f"the injected sidecar's admin port unless a policy sets spec.sidecar.adminPort "
        f"(default {SIDECAR_ADMIN_PORT})",
    )
    add(
        "--sidecar-proxy-port",
        type=int,
        default=_env("SIDECAR_PROXY_PORT") or str(SIDECAR_FORWARD_PROXY_PORT),
        help=f"the injected sidecar's forward-proxy port unless a policy sets spec.sidecar.proxyPort "
        f"(default {SIDECAR_FORWARD_PROXY_PORT})",
    )
    add(
        "--inject-all-namespaces",
        action="store_true",
        default=_bool_env("INJECT_ALL_NAMESPACES"),
        help="inject into every namespace, not only those labelled breakwater.dev/injection=enabled",
    )
    add("--webhook-listen", default=_env("WEBHOOK_LISTEN", "0.0.0.0:9443"), help="HOST:PORT of the webhook")
    add("--webhook-cert-dir", default=_env("WEBHOOK_CERT_DIR"), help="tls.crt, tls.key and ca.crt to serve")
    add(
        "--webhook-secret",
        default=_env("WEBHOOK_SECRET"),
        help="NAMESPACE/NAME: operator-managed certificate",
    )
    add("--webhook-url", default=_env("WEBHOOK_URL"), help="URL the API server calls (local runs)")
    add(
        "--webhook-service",
        default=_env("WEBHOOK_SERVICE"),
        help="NAMESPACE/NAME[:PORT] of the webhook Service",
    )
    add(
        "--webhook-configuration",
        default=_env("WEBHOOK_CONFIGURATION", "breakwater"),
        help="name of the MutatingWebhookConfiguration (default breakwater)",
    )
    add(
        "--webhook-manage",
        choices=("full", "ca-only", "none"),
        default=_env("WEBHOOK_MANAGE", "full"),
        help="full: create the configuration (local runs); ca-only: keep its caBundle (the chart); "
        "none: leave it alone (cert-manager)",
    )
    add(
        "--webhook-failure-policy",
        choices=("Ignore", "Fail"),
        default=_env("WEBHOOK_FAILURE_POLICY", "Ignore"),
        help="with --webhook-manage=full, the pod webhook's failurePolicy (the policy webhook's is Ignore)",
    )
    add(
        "--webhook-timeout-seconds",
        type=int,
        default=_env("WEBHOOK_TIMEOUT_SECONDS") or "5",
        help="how long the API server waits for the pod webhook, 1 to 30 (default 5)",
    )
    add(
        "--health-listen",
        default=_env("HEALTH_LISTEN", "0.0.0.0:8080"),
        help="HOST:PORT of /healthz (liveness) and /readyz (readiness); '' disables",
    )
    add(
        "--metrics-listen",
        default=_env("METRICS_LISTEN", ""),
        help="HOST:PORT of Prometheus /metrics; '' (the default) serves none",
    )
    add(
        "--report-listen",
        default=_env("REPORT_LISTEN", "0.0.0.0:9444"),
        help="HOST:PORT of the report endpoint",
    )
    add("--report-url", default=_env("REPORT_URL"), help="URL sidecars use to reach the report endpoint")
    add(
        "--report-advertise",
        default=_env("REPORT_ADVERTISE"),
        help="HOST:PORT where other replicas relay reports to this one when it leads; "
        "default: $POD_IP (or 127.0.0.1) and the report port",
    )
    add(
        "--lease-seconds",
        type=float,
        default=_env("LEASE_SECONDS") or "10",
        help="how long a leader that stopped renewing its Lease holds it",
    )
    add(
        "--shutdown-delay-seconds",
        type=float,
        default=_env("SHUTDOWN_DELAY_SECONDS") or "0",
        help="after SIGTERM, keep answering admissions (not ready) this long, while the endpoints drop it",
    )
    add("--log-format", choices=("text", "json"), default=_env("LOG_FORMAT", "text"), help="log line format")
    add(
        "--stale-after-seconds",
        type=float,
        default=_env("STALE_AFTER_SECONDS") or "30",
        help="a sidecar not heard from this long is no longer counted (default 30)",
    )
    add("--verbose", "-v", action="store_true", help="debug logging")


def _namespace(value: str, flag: str) -> str:
    if not is_namespace_name(value):
        raise SettingsError(f"{flag}: {value!r} is not a namespace name (lowercase letters, digits, '-')")
    return value


def _reference(value: str, flag: str) -> tuple[str, str, str]:
    """NAMESPACE/NAME[:PORT], each part checked; the port '' when absent."""
    ref, _, port = value.partition(":")
    namespace, _, name = ref.partition("/")
    if not namespace or not name:
        raise SettingsError(f"{flag}: expected NAMESPACE/NAME, got {value!r}")
    _namespace(namespace, flag)
    if not is_object_name(name):
        raise SettingsError(f"{flag}: {name!r} is not an object name")
    if port and not (port.isdigit() and 1 <= int(port) <= 65535):
        raise SettingsError(f"{flag}: expected a port 1 to 65535 after ':', got {port!r}")
    return namespace, name, port


def _url(value: str, flag: str, schemes: tuple[str, ...]) -> str:
    try:
        parts = urllib.parse.urlsplit(value)
        parts.port  # noqa: B018 - raises on a port that is not a number or out of range
    except ValueError as exc:
        raise SettingsError(f"{flag}: {value!r} is not a URL: {exc}") from exc
    if parts.scheme not in schemes or not parts.hostname:
        raise SettingsError(f"{flag}: expected a {' or '.join(schemes)} URL with a host, got {value!r}")
    return value


def _resources(text: str) -> dict[str, Any]:
    """The sidecar's ResourceRequirements: checked here, since every injected pod would carry a bad
    value and the API server would refuse each of them."""
    try:
        resources = json.loads(text)
    except json.JSONDecodeError as exc:
        raise SettingsError(f"--sidecar-resources: not JSON: {exc}") from exc
    if not isinstance(resources, dict):
        raise SettingsError("--sidecar-resources: expected a JSON object")
    for kind, amounts in resources.items():
        if kind not in ("limits", "requests", "claims"):
            raise SettingsError(f"--sidecar-resources: unknown field {kind!r} (limits, requests, claims)")
        if kind == "claims":
            if not isinstance(amounts, list):
                raise SettingsError("--sidecar-resources: claims must be a list")
            continue
        if not isinstance(amounts, dict):
            raise SettingsError(f"--sidecar-resources: {kind} must map resource names to quantities")
        for resource, amount in amounts.items():
            is_number_or_text = isinstance(amount, str | int | float) and not isinstance(amount, bool)
            if not is_number_or_text or not _QUANTITY.fullmatch(str(amount)):
                raise SettingsError(f"--sidecar-resources: {kind}.{resource}: {amount!r} is not a quantity")
    requests, limits = resources.get("requests") or {}, resources.get("limits") or {}
    for resource in requests.keys() & limits.keys():
        if _quantity(requests[resource]) > _quantity(limits[resource]):
            raise SettingsError(
                f"--sidecar-resources: requests.{resource} {requests[resource]} is above limits.{resource} "
                f"{limits[resource]} (the API server would refuse every pod given the sidecar)"
            )
    return resources


_SUFFIXES = {
    **{s: Decimal(10) ** e for s, e in (("n", -9), ("u", -6), ("m", -3), ("", 0), ("k", 3), ("M", 6))},
    **{s: Decimal(10) ** e for s, e in (("G", 9), ("T", 12), ("P", 15), ("E", 18))},
    **{s: Decimal(1024) ** e for s, e in (("Ki", 1), ("Mi", 2), ("Gi", 3), ("Ti", 4), ("Pi", 5), ("Ei", 6))},
}


def _quantity(amount: str | float) -> Decimal:
    """A Kubernetes quantity's value (one `_QUANTITY` matched), to compare a request with its limit."""
    text = str(amount).lstrip("+")
    number = re.match(r"([0-9]+(\.[0-9]*)?|\.[0-9]+)([eE][-+]?[0-9]+)?", text)
    assert number is not None
    return Decimal(number.group(0)) * _SUFFIXES[text[number.end() :]]


def _distinct(listeners: dict[str, tuple[str, int]]) -> None:
    """Two listeners on one port (on one address, or one of them on every address) cannot both bind."""
    flags = list(listeners)
    for i, first in enumerate(flags):
        for second in flags[i + 1 :]:
            (host_a, port_a), (host_b, port_b) = listeners[first], listeners[second]
            wildcard = {"0.0.0.0", "::", ""}
            if port_a == port_b and (host_a == host_b or host_a in wildcard or host_b in wildcard):
                raise SettingsError(f"{first} and {second} must differ: both listen on port {port_a}")


def from_args(args: argparse.Namespace) -> OperatorSettings:
    namespaces = tuple(args.namespaces or ())
    if not namespaces and not args.all_namespaces:
        namespaces = tuple(ns for ns in (_env("WATCH_NAMESPACES") or "").split(",") if ns)
    for namespace in namespaces:
        _namespace(namespace, "--namespace")
    if args.operator_namespace:
        _namespace(args.operator_namespace, "--operator-namespace")
    resources = _resources(args.sidecar_resources) if args.sidecar_resources else DEFAULT_SIDECAR_RESOURCES
    # Choices given by an environment variable are not checked by argparse.
    for flag, value, allowed in (
        ("--sidecar-image-pull-policy", args.sidecar_image_pull_policy or "IfNotPresent", PULL_POLICIES),
        ("--webhook-manage", args.webhook_manage, ("full", "ca-only", "none")),
        ("--webhook-failure-policy", args.webhook_failure_policy, ("Ignore", "Fail")),
        ("--log-format", args.log_format, ("text", "json")),
    ):
        if value not in allowed:
            raise SettingsError(f"{flag}: expected one of {', '.join(allowed)}, got {value!r}")
    if not 1 <= args.webhook_timeout_seconds <= 30:
        raise SettingsError(
            f"--webhook-timeout-seconds: expected 1 to 30 (the API server's bounds), "
            f"got {args.webhook_timeout_seconds}"
        )
    if not (math.isfinite(args.stale_after_seconds) and args.stale_after_seconds > 0):
        raise SettingsError(
            f"--stale-after-seconds: expected a positive number, got {args.stale_after_seconds:g}"
        )
    if args.webhook_service:
        _reference(args.webhook_service, "--webhook-service")
    if args.webhook_secret:
        _reference(args.webhook_secret, "--webhook-secret")
    if args.webhook_url:
        _url(args.webhook_url, "--webhook-url", ("https",))
    if args.report_url:
        _url(args.report_url, "--report-url", ("https", "http"))
    webhook_host, webhook_port = _host_port(args.webhook_listen, "--webhook-listen")
    report_host, report_port = _host_port(args.report_listen, "--report-listen")
    listeners = {
        "--webhook-listen": (webhook_host, webhook_port),
        "--report-listen": (report_host, report_port),
    }
    if args.health_listen:
        listeners["--health-listen"] = _host_port(args.health_listen, "--health-listen")
    if args.metrics_listen:
        listeners["--metrics-listen"] = _host_port(args.metrics_listen, "--metrics-listen")
    _distinct(listeners)
    advertise = args.report_advertise or ""
    if advertise:
        _host_port(advertise, "--report-advertise")
    else:
        advertise = f"{os.environ.get('POD_IP') or '127.0.0.1'}:{report_port}"
    if not 2 <= args.lease_seconds <= 300:
        raise SettingsError(f"--lease-seconds: expected 2 to 300, got {args.lease_seconds:g}")
    if not 0 <= args.shutdown_delay_seconds <= 120:
        raise SettingsError(
            f"--shutdown-delay-seconds: expected 0 to 120, got {args.shutdown_delay_seconds:g}"
        )
    ports = {"--sidecar-admin-port": args.sidecar_admin_port, "--sidecar-proxy-port": args.sidecar_proxy_port}
    for flag, port in ports.items():
        if not 1024 <= port <= 65535:
            raise SettingsError(f"{flag}: expected 1024 to 65535 (the sidecar runs unprivileged), got {port}")
    if args.sidecar_admin_port == args.sidecar_proxy_port:
        raise SettingsError(
            f"--sidecar-admin-port and --sidecar-proxy-port must differ, both are {args.sidecar_admin_port}"
        )
    if args.webhook_manage != "none" and not (args.webhook_url or args.webhook_service):
        raise SettingsError("--webhook-url or --webhook-service is required unless --webhook-manage=none")
    defaults = OperatorSettings()
    return OperatorSettings(
        watch_namespaces=namespaces,
        operator_namespace=args.operator_namespace or defaults.operator_namespace,
        sidecar_image=args.sidecar_image or defaults.sidecar_image,
        sidecar_image_pull_policy=args.sidecar_image_pull_policy or defaults.sidecar_image_pull_policy,
        sidecar_resources=resources,
        sidecar_admin_port=args.sidecar_admin_port,
        sidecar_proxy_port=args.sidecar_proxy_port,
        inject_all_namespaces=args.inject_all_namespaces,
        webhook_listen_host=webhook_host,
        webhook_listen_port=webhook_port,
        webhook_cert_dir=args.webhook_cert_dir,
        webhook_secret=args.webhook_secret,
        webhook_url=args.webhook_url,
        webhook_service=args.webhook_service,
        webhook_configuration=args.webhook_configuration,
        webhook_manage=args.webhook_manage,
        webhook_failure_policy=args.webhook_failure_policy,
        webhook_timeout_seconds=args.webhook_timeout_seconds,
        health_listen=args.health_listen or None,
        metrics_listen=_host_port(args.metrics_listen, "--metrics-listen") if args.metrics_listen else None,
        report_listen_host=report_host,
        report_listen_port=report_port,
        report_url=args.report_url,
        report_advertise=advertise,
        lease_seconds=args.lease_seconds,
        shutdown_delay_seconds=args.shutdown_delay_seconds,
        log_format=args.log_format,
        stale_after_seconds=args.stale_after_seconds,
        kubeconfig=args.kubeconfig,
    )


def report_url(settings: OperatorSettings) -> str | None:
    """Where sidecars push reports: `--report-url`, or the webhook Service's `report` port in-cluster."""
    if settings.report_url:
        return settings.report_url
    if settings.webhook_service:
        ref = settings.webhook_service.partition(":")[0]
        namespace, _, name = ref.partition("/")
        return f"https://{name}.{namespace}.svc:{settings.report_listen_port}"
    return None


def lease_name(settings: OperatorSettings) -> str:
    """The Lease the replicas of one installation elect their leader with (one per webhook configuration,
    so two installations in one cluster never share a leader)."""
    return f"{settings.webhook_configuration}-leader"
