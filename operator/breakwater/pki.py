"""Certificates without a CA service: a throw-away or operator-managed CA, serving and client certs.

The operator runs this module as a child (`python -m breakwater.pki`, see `breakwater.serving_cert`):
one JSON request on stdin, the certificate to serve on stdout, so it never loads cryptography itself.
"""

from __future__ import annotations

import base64
import datetime
import ipaddress
import json
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

_VALIDITY = datetime.timedelta(days=2)


@dataclass(frozen=True)
class KeyPair:
    cert_pem: bytes
    key_pem: bytes

    def write(self, directory: Path, stem: str) -> tuple[Path, Path]:
        cert, key = directory / f"{stem}.crt", directory / f"{stem}.key"
        cert.write_bytes(self.cert_pem)
        key.write_bytes(self.key_pem)
        key.chmod(0o600)
        return cert, key


def _key_pem(key: ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )


class CertificateAuthority:
    """A CA that signs serving certs (with IP/DNS SANs) and client certs (CN = user, O = groups)."""

    def __init__(
        self, common_name: str = "breakwater-test-ca", *, validity: datetime.timedelta = _VALIDITY
    ) -> None:
        self._key: ec.EllipticCurvePrivateKey = ec.generate_private_key(ec.SECP256R1())
        now = datetime.datetime.now(datetime.UTC)
        name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])
        self._name = name
        self._cert = (
            x509.CertificateBuilder()
            .subject_name(name)
            .issuer_name(name)
            .public_key(self._key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=5))
            .not_valid_after(now + validity)
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .add_extension(
                x509.KeyUsage(
                    digital_signature=True,
                    key_cert_sign=True,
                    crl_sign=True,
                    content_commitment=False,
                    key_encipherment=False,
                    data_encipherment=False,
                    key_agreement=False,
                    encipher_only=False,
                    decipher_only=False,
                ),
                critical=True,
            )
            .sign(self._key, hashes.SHA256())
        )

    @classmethod
    def from_pem(cls, cert_pem: bytes, key_pem: bytes) -> CertificateAuthority:
        """A CA loaded from a stored certificate and key (e.g. the operator's webhook Secret)."""
        key = serialization.load_pem_private_key(key_pem, password=None)
        if not isinstance(key, ec.EllipticCurvePrivateKey):
            raise ValueError("the stored CA key is not an EC key")
        ca = cls.__new__(cls)
        ca._key = key
        ca._cert = x509.load_pem_x509_certificate(cert_pem)
        ca._name = ca._cert.subject
        return ca

    @property
    def cert_pem(self) -> bytes:
        return self._cert.public_bytes(serialization.Encoding.PEM)

    @property
    def key_pem(self) -> bytes:
        return _key_pem(self._key)

    def issue(
        self,
        common_name: str,
        *,
        organizations: tuple[str, ...] = (),
        ips: tuple[str, ...] = (),
        dns_names: tuple[str, ...] = (),
        client: bool = False,
        server: bool = False,
        validity: datetime.timedelta = _VALIDITY,
    ) -> KeyPair:
        key = ec.generate_private_key(ec.SECP256R1())
        attrs = [x509.NameAttribute(NameOID.COMMON_NAME, common_name)]
        attrs += [x509.NameAttribute(NameOID.ORGANIZATION_NAME, org) for org in organizations]
        now = datetime.datetime.now(datetime.UTC)
        usages = []
        if client:
            usages.append(ExtendedKeyUsageOID.CLIENT_AUTH)
        if server:
            usages.append(ExtendedKeyUsageOID.SERVER_AUTH)
        builder = (
            x509.CertificateBuilder()
            .subject_name(x509.Name(attrs))
            .issuer_name(self._name)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=5))
            .not_valid_after(now + validity)
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(x509.ExtendedKeyUsage(usages), critical=False)
        )
        sans: list[x509.GeneralName] = [x509.IPAddress(ipaddress.ip_address(ip)) for ip in ips]
        sans += [x509.DNSName(name) for name in dns_names]
        if sans:
            builder = builder.add_extension(x509.SubjectAlternativeName(sans), critical=False)
        cert = builder.sign(self._key, hashes.SHA256())
        return KeyPair(cert.public_bytes(serialization.Encoding.PEM), _key_pem(key))


def service_account_keys() -> KeyPair:
    """An RSA key pair for signing service-account tokens (public part in `cert_pem`)."""
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    public = key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    return KeyPair(public, _key_pem(key))


def expires_at(cert_pem: bytes) -> datetime.datetime:
    return x509.load_pem_x509_certificate(cert_pem).not_valid_after_utc


def covers(cert_pem: bytes, *, ips: tuple[str, ...] = (), dns_names: tuple[str, ...] = ()) -> bool:
    """True when the certificate's SANs include every requested IP and DNS name (always, when none
    is requested: a CA has no SANs, and asking it for none must not read as "not covered")."""
    if not ips and not dns_names:
        return True
    cert = x509.load_pem_x509_certificate(cert_pem)
    try:
        sans = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        return False
    have_ips = {str(ip) for ip in sans.get_values_for_type(x509.IPAddress)}
    have_dns = set(sans.get_values_for_type(x509.DNSName))
    return set(ips) <= have_ips and set(dns_names) <= have_dns


def _usable(cert_pem: bytes, renew_before: datetime.timedelta, **names: tuple[str, ...]) -> bool:
    if not cert_pem:
        return False
    remaining = expires_at(cert_pem) - datetime.datetime.now(datetime.UTC)
    return remaining > renew_before and covers(cert_pem, **names)


def serving_certificate(request: dict[str, Any]) -> dict[str, Any]:
    """The child's answer to `breakwater.serving_cert.ServingCertRequest`: the stored CA and certificate while
    they are good (not within `renew_before_days` of expiry, the certificate covering every name), else
    a new certificate from the stored CA, or from a new CA when that is not good either."""
    pem = {k: base64.b64decode(request[k]) for k in ("ca_cert", "ca_key", "cert", "key")}
    dns_names, ips = tuple[str, ...](request["dns_names"]), tuple[str, ...](request["ips"])
    renew_before = datetime.timedelta(days=request["renew_before_days"])
    ca_ok = bool(pem["ca_cert"] and pem["ca_key"]) and _usable(pem["ca_cert"], renew_before)
    issued = not (ca_ok and pem["key"] and _usable(pem["cert"], renew_before, dns_names=dns_names, ips=ips))
    if issued:
        if ca_ok:
            ca = CertificateAuthority.from_pem(pem["ca_cert"], pem["ca_key"])
        else:
            validity = datetime.timedelta(days=request["ca_validity_days"])
            ca = CertificateAuthority(request["ca_name"], validity=validity)
        pair = ca.issue(
            (dns_names or ips or ("breakwater-webhook",))[0], dns_names=dns_names, ips=ips, server=True,
            validity=datetime.timedelta(days=request["validity_days"]),
        )  # fmt: skip
        pem = {"ca_cert": ca.cert_pem, "ca_key": ca.key_pem, "cert": pair.cert_pem, "key": pair.key_pem}
    due = min(expires_at(pem["ca_cert"]), expires_at(pem["cert"])) - renew_before
    return {
        **{k: base64.b64encode(v).decode() for k, v in pem.items()},
        "issued": issued, "new_ca": issued and not ca_ok, "renew_after": due.timestamp(),
    }  # fmt: skip


if __name__ == "__main__":
    try:
        print(json.dumps(serving_certificate(json.load(sys.stdin))))
    except (ValueError, KeyError, TypeError) as exc:  # a stored CA or certificate that does not load
        sys.exit(f"breakwater.pki: {type(exc).__name__}: {exc}")
