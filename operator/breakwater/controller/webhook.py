"""The webhook's TLS certificate (`ServingTLS`) and the API server's view of the webhook.

The MutatingWebhookConfiguration is created and owned by the operator (`--webhook-manage=full`, local
runs), only has its caBundle kept right (`ca-only`, the Helm chart owns the object), or left alone
(`none`, cert-manager's CA injector does it); the leader does it (`sync_configuration`).
"""

from __future__ import annotations

import asyncio
import atexit
import base64
import ipaddress
import logging
import shutil
import ssl
import tempfile
import urllib.parse
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from breakwater import serving_cert
from breakwater.api.constants import NAMESPACE_LABEL, NEVER_INJECTED_NAMESPACES
from breakwater.controller.settings import OperatorSettings, SettingsError
from breakwater.errors import UnusableCertificate
from breakwater.k8s import secrets, webhooks

logger = logging.getLogger(__name__)

CERT_CHECK_SECONDS = 60.0  # renewals reach every replica within this (the leader renews 30 days early)
SECRET_POLL_SECONDS = 2.0


@dataclass(frozen=True)
class Endpoint:
    """Where the API server reaches the operator's webhook server (a Service, or a URL)."""

    service: dict[str, Any] | None  # namespace, name, port: without a path
    url: str | None  # scheme://host:port/prefix, without a path
    dns_names: tuple[str, ...]
    ips: tuple[str, ...]

    def client_config(self, handler_id: str) -> dict[str, Any]:
        """The clientConfig of one webhook: the admission server serves each at /<its id>."""
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
            raise SettingsError(f"--webhook-service: expected NAMESPACE/NAME[:PORT], got {ref!r}")
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
    """Write the certificate's files; True when they changed."""
    changed = False
    for name, content in (("tls.crt", cert.cert_pem), ("tls.key", cert.key_pem), ("ca.crt", cert.ca_pem)):
        path = directory / name
        if not path.exists() or path.read_bytes() != content:
            path.write_bytes(content)
            changed = True
    (directory / "tls.key").chmod(0o600)
    return changed


def _generated(where: Endpoint) -> secrets.ServingCertificate:
    """A throw-away CA and certificate for this process (no Secret, no mounted files): two days."""
    got = serving_cert.serving_certificate(
        serving_cert.ServingCertRequest(
            dns_names=where.dns_names, ips=where.ips, ca_name="breakwater-local-webhook-ca",
            ca_validity_days=2, validity_days=2, renew_before_days=0,
        )
    )  # fmt: skip
    return secrets.ServingCertificate(got.cert, got.key, got.ca_cert)


async def sync_configuration(settings: OperatorSettings, api: Any, ca_pem: bytes) -> None:
    """Make the MutatingWebhookConfiguration what `--webhook-manage` says (the leader's duty)."""
    where = endpoint(settings)
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


@dataclass
class ServingTLS:
    """The serving certificate of the webhook and report endpoints, from one of three sources:

    - files in `--webhook-cert-dir` (cert-manager's Secret, mounted): read, and re-read when they change;
    - the Secret `--webhook-secret`: the leader creates it and renews it before expiry, every replica
      reads it (a replica that starts before any leader wrote it waits);
    - neither: a throw-away CA generated here (local runs, one replica), kept in `--webhook-cert-dir`
      when that is given but empty, so sidecars trusting its CA keep reporting after a restart.

    One `ssl.SSLContext` serves both endpoints; a renewed certificate is loaded into it, which takes
    effect for the next TLS handshake.
    """

    settings: OperatorSettings
    api: Any
    cert_dir: Path = field(init=False)
    context: ssl.SSLContext = field(init=False)
    ca_pem: bytes = b""
    key_pem: bytes = b""
    listeners: list[Callable[[], None]] = field(default_factory=list)  # called after a renewal is loaded

    def __post_init__(self) -> None:
        given = self.settings.webhook_cert_dir
        if given:
            self.cert_dir = Path(given)
        else:
            self.cert_dir = Path(tempfile.mkdtemp(prefix="breakwater-webhook-"))
            atexit.register(shutil.rmtree, self.cert_dir, ignore_errors=True)  # keys never outlive it
        self.cert_dir.mkdir(parents=True, exist_ok=True)
        self.context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)

    @property
    def source(self) -> str:
        if self.settings.webhook_secret:
            return f"Secret {self.settings.webhook_secret}"
        return f"files in {self.cert_dir}" if self.settings.webhook_cert_dir else "a generated CA"

    @property
    def mounted(self) -> bool:
        return not self.settings.webhook_secret and (self.cert_dir / "tls.crt").exists()

    async def load(self, *, leader: Callable[[], bool]) -> None:
        """The first certificate: returns once there is one to serve."""
        if not self.settings.webhook_secret and not self.mounted:
            _write(self.cert_dir, _generated(endpoint(self.settings)))
        waited = False
        while True:
            try:
                if await self.refresh(leader=leader()):
                    return
            except UnusableCertificate as exc:
                logger.error("%s; waiting for a usable one", exc)
            if not waited:
                logger.info("waiting for the leader to write the webhook certificate (%s)", self.source)
                waited = True
            await asyncio.sleep(SECRET_POLL_SECONDS)

    async def refresh(self, *, leader: bool) -> bool:
        """Bring the files and the context up to date with the source; False while it has nothing."""
        if self.settings.webhook_secret:
            namespace, _, name = self.settings.webhook_secret.partition("/")
            where = endpoint(self.settings)
            if leader:
                cert: secrets.ServingCertificate | None = await asyncio.to_thread(
                    secrets.ensure_serving_certificate,
                    self.api,
                    namespace=namespace,
                    name=name,
                    dns_names=where.dns_names,
                    ips=where.ips,
                )
            else:
                cert = await asyncio.to_thread(
                    secrets.read_serving_certificate, self.api, namespace=namespace, name=name
                )
            if cert is None:
                return False
            _write(self.cert_dir, cert)
        self._load_files()
        return True

    def _load_files(self) -> None:
        key = (self.cert_dir / "tls.key").read_bytes()
        ca_file = self.cert_dir / "ca.crt"
        ca = ca_file.read_bytes() if ca_file.exists() else b""
        if (key, ca) == (self.key_pem, self.ca_pem) and self.key_pem:
            return
        renewed = bool(self.key_pem)
        # A pair that does not load (a tls.crt not matching tls.key) must not reach the shared context:
        # a failed load_cert_chain can leave it half-replaced, and the replica serves what it had.
        try:
            ssl.create_default_context(ssl.Purpose.CLIENT_AUTH).load_cert_chain(
                self.cert_dir / "tls.crt", self.cert_dir / "tls.key"
            )
        except ssl.SSLError as exc:
            raise UnusableCertificate(f"the certificate from {self.source} cannot be served: {exc}") from exc
        self.context.load_cert_chain(self.cert_dir / "tls.crt", self.cert_dir / "tls.key")
        self.key_pem, self.ca_pem = key, ca
        if renewed:
            logger.info("webhook certificate renewed (%s): serving the new one", self.source)
            for listener in self.listeners:
                listener()

    async def keep_current(self, *, leader: Callable[[], bool]) -> None:
        """Follow renewals (every replica), and renew before expiry (the leader)."""
        while True:
            await asyncio.sleep(CERT_CHECK_SECONDS)
            try:
                await self.refresh(leader=leader())
            except UnusableCertificate as exc:
                logger.error("%s; still serving the current one", exc)
            except Exception:
                logger.exception("webhook certificate check failed (%s); retrying", self.source)


def describe(settings: OperatorSettings, tls: ServingTLS) -> str:
    return (
        f"webhook serving on {settings.webhook_listen_host}:{settings.webhook_listen_port} "
        f"({endpoint(settings).describe()}, certificate from {tls.source}), "
        f"configuration {settings.webhook_configuration} managed: {settings.webhook_manage}"
    )
