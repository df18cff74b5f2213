"""The webhook's serving certificate, decided and issued in a short-lived child process.

The operator never loads `cryptography`: its Rust library and modules stay resident once imported,
about 10 MiB of the operator's RSS (measured: 81 vs 71 MiB after the operator's imports and one
issuance), for milliseconds of work at start and at a renewal a year. `python -m breakwater.pki` gets
the stored CA and certificate as one JSON request on stdin and answers with the certificate to serve
(the stored one while it is good, else a new one) and when it is due for renewal. The answer is
remembered until then, so the replicas' 60-s check of an unchanged Secret starts no process.
"""

from __future__ import annotations

import base64
import json
import subprocess
import sys
import time
from dataclasses import dataclass
from typing import Any

from breakwater.errors import UnusableCertificate

__all__ = ["CertificateNotIssued", "Issued", "ServingCertRequest", "serving_certificate"]

CHILD_TIMEOUT_SECONDS = 60.0


class CertificateNotIssued(UnusableCertificate):
    """The child could not decide or issue the certificate (its last error line says why)."""


@dataclass(frozen=True, slots=True)
class ServingCertRequest:
    """What is stored (empty bytes: nothing yet) and what the certificate must cover."""

    ca_cert: bytes = b""
    ca_key: bytes = b""
    cert: bytes = b""
    key: bytes = b""
    dns_names: tuple[str, ...] = ()
    ips: tuple[str, ...] = ()
    ca_name: str = "breakwater-webhook-ca"
    ca_validity_days: float = 3650.0
    validity_days: float = 365.0
    renew_before_days: float = 30.0

    def to_json(self) -> dict[str, Any]:
        pems = {k: base64.b64encode(getattr(self, k)).decode() for k in ("ca_cert", "ca_key", "cert", "key")}
        return {
            **pems, "dns_names": list(self.dns_names), "ips": list(self.ips), "ca_name": self.ca_name,
            "ca_validity_days": self.ca_validity_days, "validity_days": self.validity_days,
            "renew_before_days": self.renew_before_days,
        }  # fmt: skip


@dataclass(frozen=True, slots=True)
class Issued:
    """The CA and certificate to serve; `issued`: new ones (to store); `new_ca`: the CA is new too."""

    ca_cert: bytes
    ca_key: bytes
    cert: bytes
    key: bytes
    issued: bool
    new_ca: bool
    renew_after: float  # wall clock: the stored pair is good until then

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Issued:
        pems = {k: base64.b64decode(data[k]) for k in ("ca_cert", "ca_key", "cert", "key")}
        return cls(**pems, issued=bool(data["issued"]), new_ca=bool(data["new_ca"]),
                   renew_after=float(data["renew_after"]))  # fmt: skip


_remembered: dict[ServingCertRequest, Issued] = {}


def serving_certificate(request: ServingCertRequest, *, now: float | None = None) -> Issued:
    """The certificate to serve for `request`: the stored one while it is good, else a new one."""
    now = time.time() if now is None else now
    known = _remembered.get(request)
    if known is not None and now < known.renew_after:
        return known
    try:
        done = subprocess.run(
            [sys.executable, "-m", "breakwater.pki"],
            input=json.dumps(request.to_json()), capture_output=True, text=True,
            timeout=CHILD_TIMEOUT_SECONDS, check=False,
        )  # fmt: skip
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise CertificateNotIssued(f"cannot run {sys.executable} -m breakwater.pki: {exc}") from exc
    if done.returncode != 0:
        last = (done.stderr.strip().splitlines() or [f"exit status {done.returncode}"])[-1]
        raise CertificateNotIssued(f"the certificate child failed: {last}")
    issued = Issued.from_json(json.loads(done.stdout))
    _remembered.clear()  # one Secret per operator: only the latest answer is worth keeping
    stored = ServingCertRequest(issued.ca_cert, issued.ca_key, issued.cert, issued.key, **_needs(request))
    _remembered[stored] = Issued(**{**_fields(issued), "issued": False, "new_ca": False})
    return issued


def _needs(request: ServingCertRequest) -> dict[str, Any]:
    """What the certificate must cover and how long it lives: the request without what is stored."""
    stored = ("ca_cert", "ca_key", "cert", "key")
    return {k: getattr(request, k) for k in ServingCertRequest.__dataclass_fields__ if k not in stored}


def _fields(issued: Issued) -> dict[str, Any]:
    return {k: getattr(issued, k) for k in Issued.__dataclass_fields__}
