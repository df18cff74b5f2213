"""The operator-managed webhook certificate, kept in one Secret of the operator's namespace.

The Secret holds the CA (cert and key) and a serving certificate it signed; whether they are still good,
and new ones when not, come from a child process (`breakwater.serving_cert`). It is reused across
restarts and replicas, and re-issued (by the leader only) when it nears expiry or no longer covers the
Service names; the other replicas read it.
"""

from __future__ import annotations

import base64
import datetime
import logging
from dataclasses import dataclass
from typing import Any

from breakwater import serving_cert
from breakwater.k8s.client import ApiClient, ApiError, core_path, is_status, request

logger = logging.getLogger(__name__)

CA_VALIDITY = datetime.timedelta(days=3650)
SERVING_VALIDITY = datetime.timedelta(days=365)
RENEW_BEFORE = datetime.timedelta(days=30)


@dataclass(frozen=True)
class ServingCertificate:
    cert_pem: bytes
    key_pem: bytes
    ca_pem: bytes


def _decode(data: dict[str, str], key: str) -> bytes:
    return base64.b64decode(data.get(key, ""))


def read_serving_certificate(api: ApiClient, *, namespace: str, name: str) -> ServingCertificate | None:
    """The certificate the Secret holds, as another replica (the leader) wrote it; None while it has none."""
    try:
        secret = request(api, "GET", core_path(namespace, "secrets", name))
    except ApiError as exc:
        if is_status(exc, 404):
            return None
        raise
    data = dict(secret.get("data") or {})
    cert, key, ca = _decode(data, "tls.crt"), _decode(data, "tls.key"), _decode(data, "ca.crt")
    return ServingCertificate(cert, key, ca) if cert and key and ca else None


def ensure_serving_certificate(
    api: ApiClient, *, namespace: str, name: str, dns_names: tuple[str, ...], ips: tuple[str, ...] = ()
) -> ServingCertificate:
    secret: dict[str, Any] | None
    try:
        secret = request(api, "GET", core_path(namespace, "secrets", name))
        data = dict(secret.get("data") or {})
    except ApiError as exc:
        if not is_status(exc, 404):
            raise
        secret, data = None, {}
    got = serving_cert.serving_certificate(
        serving_cert.ServingCertRequest(
            ca_cert=_decode(data, "ca.crt"), ca_key=_decode(data, "ca.key"),
            cert=_decode(data, "tls.crt"), key=_decode(data, "tls.key"),
            dns_names=dns_names, ips=ips, ca_validity_days=CA_VALIDITY.days,
            validity_days=SERVING_VALIDITY.days, renew_before_days=RENEW_BEFORE.days,
        )
    )  # fmt: skip
    if not got.issued:
        return ServingCertificate(got.cert, got.key, got.ca_cert)
    if got.new_ca:
        logger.info("generated a new webhook CA in Secret %s/%s", namespace, name)
    body: dict[str, Any] = {
        "apiVersion": "v1",
        "kind": "Secret",
        "metadata": {"name": name, "labels": {"app.kubernetes.io/managed-by": "breakwater"}},
        "type": "kubernetes.io/tls",
        "data": {
            "ca.crt": base64.b64encode(got.ca_cert).decode(),
            "ca.key": base64.b64encode(got.ca_key).decode(),
            "tls.crt": base64.b64encode(got.cert).decode(),
            "tls.key": base64.b64encode(got.key).decode(),
        },
    }
    if secret is None:
        request(api, "POST", core_path(namespace, "secrets"), body)
    else:
        body["metadata"]["resourceVersion"] = secret["metadata"]["resourceVersion"]
        request(api, "PUT", core_path(namespace, "secrets", name), body)
    logger.info(
        "issued webhook serving certificate for %s (Secret %s/%s)",
        ", ".join(dns_names or ips),
        namespace,
        name,
    )
    return ServingCertificate(got.cert, got.key, got.ca_cert)
