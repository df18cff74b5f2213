"""Serving the admission webhook over TLS, and keeping the API server's view of it right.

Certificates come from, in order: files in `--webhook-cert-dir` (e.g. cert-manager's Secret, mounted),
the operator-managed Secret `--webhook-secret` (created, reused and rotated here), or a throw-away CA
generated at start-up (local runs). The MutatingWebhookConfiguration is created and owned by the
operator (`--webhook-manage=full`, local runs), only has its caBundle kept right (`ca-only`, the Helm
chart owns the object), or left alone (`none`, cert-manager's CA injector does it).
"""

from __future__ import annotations

import asyncio
import atexit
import base64
import ipaddress
import logging
import shutil
import tempfile
import urllib.parse
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import kopf

from breakwater import pki
from breakwater.api.constants import NAMESPACE_LABEL, NEVER_INJECTED_NAMESPACES
from breakwater.controller.settings import OperatorSettings
from breakwater.k8s import secrets, webhooks

logger = logging.getLogger(__name__)

ROTATION_CHECK_SECONDS = 6 * 3600


@dataclass(frozen=True)
class Endpoint:
    """Where the API server reaches the operator's webhook server (a Service, or a URL)."""

    service: dict[str, Any] | None  # namespace, name, port: without a path
    url: str | None  # scheme://host:port/prefix, without a path
    dns_names: tuple[str, ...]
    ips: tuple[str, ...]

    def client_config(self, handler_id: str) -> dict[str, Any]:
        """The clientConfig of one webhook: kopf serves each handler at /<its id>."""
        if self.service is not None:
            return {"service": {**self.service, "path": f"/{handler_id}"}}
        assert self.url is not None
        return {"url": f"{self.url}/{handler_id}"}

    def describe(self) -> str:
        return self.url or "service {namespace}/{name}".format(**(self.service or {}))


def endpoint(settings: OperatorSettings) -> Endpoint:
    if settings.webhook_service:
        ref, _, port = settings.webhook_service.partition(":")
        namespace, _, name = ref.partition("/")
        if not namespace or not name:
            raise kopf.PermanentError(f"--webhook-service: expected NAMESPACE/NAME[:PORT], got {ref!r}")
        service: dict[str, Any] = {"namespace": namespace, "name": name}
        if port:
            service["port"] = int(port)
        dns = (
            name,
            f"{name}.{namespace}",
            f"{name}.{namespace}.svc",
            f"{name}.{namespace}.svc.cluster.local",
        )
        return Endpoint(service, None, dns, ())
    url = urllib.parse.urlsplit(settings.webhook_url or f"https://127.0.0.1:{settings.webhook_listen_port}")
    host = url.hostname or "127.0.0.1"
    base = urllib.parse.urlunsplit((url.scheme, url.netloc, url.path.rstrip("/"), "", ""))
    try:
        ipaddress.ip_address(host)
        return Endpoint(None, base, (), (host,))
    except ValueError:
        return Endpoint(None, base, (host,), ())


def namespace_selector(settings: OperatorSettings) -> dict[str, Any]:
    excluded = sorted({*NEVER_INJECTED_NAMESPACES, settings.operator_namespace})
    expressions: list[dict[str, Any]] = [
        {"key": "kubernetes.io/metadata.name", "operator": "NotIn", "values": excluded}
    ]
    if settings.watch_namespaces:
        expressions.append(
            {
                "key": "kubernetes.io/metadata.name",
                "operator": "In",
                "values": sorted(settings.watch_namespaces),
            }
        )
    if settings.inject_all_namespaces:
        return {"matchExpressions": expressions}
    return {"matchLabels": {NAMESPACE_LABEL: "enabled"}, "matchExpressions": expressions}


def _write(directory: Path, cert: secrets.ServingCertificate) -> bool:
    """Write the files kopf's server reads; True when they changed (kopf then reloads them)."""
    changed = False
    for name, content in (("tls.crt", cert.cert_pem), ("tls.key", cert.key_pem), ("ca.crt", cert.ca_pem)):
        path = directory / name
        if not path.exists() or path.read_bytes() != content:
            path.write_bytes(content)
            changed = True
    (directory / "tls.key").chmod(0o600)
    return changed


async def _certificate(settings: OperatorSettings, api: Any, where: Endpoint) -> secrets.ServingCertificate:
    if settings.webhook_secret:
        namespace, _, name = settings.webhook_secret.partition("/")
        return await asyncio.to_thread(
            secrets.ensure_serving_certificate,
            api,
            namespace=namespace,
            name=name,
            dns_names=where.dns_names,
            ips=where.ips,
        )
    ca = pki.CertificateAuthority("breakwater-local-webhook-ca")
    pair = ca.issue((where.dns_names or where.ips)[0], dns_names=where.dns_names, ips=where.ips, server=True)
    return secrets.ServingCertificate(pair.cert_pem, pair.key_pem, ca.cert_pem)


async def _sync_configuration(settings: OperatorSettings, api: Any, where: Endpoint, ca_pem: bytes) -> None:
    if settings.webhook_manage == "full":
        ca_bundle = base64.b64encode(ca_pem).decode()
        body = webhooks.desired_configuration(
            name=settings.webhook_configuration,
            client_config=lambda handler_id: {**where.client_config(handler_id), "caBundle": ca_bundle},
            namespace_selector=namespace_selector(settings),
            failure_policy=settings.webhook_failure_policy,
            timeout_seconds=settings.webhook_timeout_seconds,
        )
        await asyncio.to_thread(webhooks.apply_configuration, api, body)
    elif settings.webhook_manage == "ca-only":
        await asyncio.to_thread(
            webhooks.patch_ca_bundle, api, name=settings.webhook_configuration, ca_pem=ca_pem
        )


@dataclass(frozen=True)
class Served:
    """Where the serving certificate lives (the report endpoint serves the same one) and its CA."""

    cert_dir: Path
    ca_pem: bytes


async def configure(kopf_settings: kopf.OperatorSettings, settings: OperatorSettings, api: Any) -> Served:
    """Set up kopf's webhook server and the webhook configuration; start certificate rotation."""
    where = endpoint(settings)
    given = Path(settings.webhook_cert_dir) if settings.webhook_cert_dir else None
    if given and (given / "tls.crt").exists() and not settings.webhook_secret:
        # Mounted (e.g. cert-manager) or kept from an earlier run: serve what is there.
        cert_dir = given
        ca_file = given / "ca.crt"
        ca_pem = ca_file.read_bytes() if ca_file.exists() else b""
    else:
        # An empty --webhook-cert-dir keeps the generated certificate across restarts, so sidecars
        # that trust its CA keep reporting after the operator restarts (local runs, tests, the demo).
        if given is None:
            cert_dir = Path(tempfile.mkdtemp(prefix="breakwater-webhook-"))
            atexit.register(shutil.rmtree, cert_dir, ignore_errors=True)  # keys never outlive the process
        else:
            cert_dir = given
        cert_dir.mkdir(parents=True, exist_ok=True)
        cert = await _certificate(settings, api, where)
        _write(cert_dir, cert)
        ca_pem = cert.ca_pem
        if settings.webhook_secret:
            asyncio.get_running_loop().create_task(_rotate(settings, api, where, cert_dir))
    kopf_settings.admission.server = kopf.WebhookServer(
        addr=settings.webhook_listen_host,
        port=settings.webhook_listen_port,
        certfile=str(cert_dir / "tls.crt"),
        pkeyfile=str(cert_dir / "tls.key"),
        cafile=str(cert_dir / "ca.crt") if (cert_dir / "ca.crt").exists() else None,
        file_check_interval=30,
    )
    kopf_settings.admission.managed = None
    if ca_pem:
        await _sync_configuration(settings, api, where, ca_pem)
    logger.info(
        "webhook serving on %s:%s (%s), configuration %s managed: %s",
        settings.webhook_listen_host,
        settings.webhook_listen_port,
        where.describe(),
        settings.webhook_configuration,
        settings.webhook_manage,
    )
    return Served(cert_dir, ca_pem)


async def _rotate(settings: OperatorSettings, api: Any, where: Endpoint, cert_dir: Path) -> None:
    while True:
        await asyncio.sleep(ROTATION_CHECK_SECONDS)
        try:
            cert = await _certificate(settings, api, where)
            if _write(cert_dir, cert):
                logger.info("webhook certificate renewed; the server reloads it")
            await _sync_configuration(settings, api, where, cert.ca_pem)
        except Exception:
            logger.exception("webhook certificate rotation failed; retrying in %s s", ROTATION_CHECK_SECONDS)
