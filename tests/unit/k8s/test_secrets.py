"""Which stored webhook certificates the operator keeps: a restart must reuse the Secret's CA, or every
sidecar created before it (trusting the old CA for its report channel) stops reporting. Decided by the
real child process (`python -m breakwater.pki`) the operator runs, so the operator never loads
cryptography."""

from __future__ import annotations

import datetime
import sys
import time

import pytest

from breakwater import pki, serving_cert
from breakwater.k8s import secrets

NAMES = ("bw.breakwater-system.svc",)


def stored(
    ca: pki.CertificateAuthority, pair: pki.KeyPair | None = None, **names: tuple[str, ...]
) -> serving_cert.ServingCertRequest:
    return serving_cert.ServingCertRequest(
        ca.cert_pem, ca.key_pem, pair.cert_pem if pair else b"", pair.key_pem if pair else b"",
        ca_validity_days=secrets.CA_VALIDITY.days, validity_days=secrets.SERVING_VALIDITY.days,
        renew_before_days=secrets.RENEW_BEFORE.days, **names,
    )  # fmt: skip


def test_a_stored_ca_is_reused_while_it_has_more_than_30_days_left() -> None:
    """Found on a real node: the CA (which has no SANs) never counted as usable, so every operator
    restart made a new CA and rewrote the webhook's caBundle."""
    ca = pki.CertificateAuthority("breakwater-webhook-ca", validity=secrets.CA_VALIDITY)
    got = serving_cert.serving_certificate(stored(ca, dns_names=NAMES))
    assert got.issued
    assert not got.new_ca
    assert got.ca_cert == ca.cert_pem
    assert pki.covers(got.cert, dns_names=NAMES)
    ending = pki.CertificateAuthority("breakwater-webhook-ca", validity=datetime.timedelta(days=10))
    renewed = serving_cert.serving_certificate(stored(ending, dns_names=NAMES))
    assert renewed.new_ca
    assert renewed.ca_cert != ending.cert_pem
    assert pki.expires_at(renewed.ca_cert) > datetime.datetime.now(datetime.UTC) + datetime.timedelta(
        days=3000
    )


def test_a_serving_certificate_is_reused_only_for_the_names_it_covers() -> None:
    ca = pki.CertificateAuthority("breakwater-webhook-ca", validity=secrets.CA_VALIDITY)
    pair = ca.issue(NAMES[0], dns_names=NAMES, server=True, validity=secrets.SERVING_VALIDITY)
    kept = serving_cert.serving_certificate(stored(ca, pair, dns_names=NAMES))
    assert not kept.issued
    assert kept.cert == pair.cert_pem
    moved = serving_cert.serving_certificate(stored(ca, pair, dns_names=("other.ns.svc",)))
    assert moved.issued
    assert not moved.new_ca
    assert pki.covers(moved.cert, dns_names=("other.ns.svc",))
    assert not pki.covers(ca.cert_pem, dns_names=NAMES)


def test_an_unchanged_secret_is_not_checked_again_until_it_is_due(monkeypatch: pytest.MonkeyPatch) -> None:
    ca = pki.CertificateAuthority("breakwater-webhook-ca", validity=secrets.CA_VALIDITY)
    first = serving_cert.serving_certificate(stored(ca, dns_names=NAMES))
    again = stored(ca, pki.KeyPair(first.cert, first.key), dns_names=NAMES)
    monkeypatch.setattr(sys, "executable", "/nonexistent/python")  # any child started now fails
    assert serving_cert.serving_certificate(again).cert == first.cert  # remembered: no child
    due = first.renew_after + 1
    assert due > time.time() + 300 * 86400
    with pytest.raises(serving_cert.CertificateNotIssued, match="cannot run /nonexistent/python"):
        serving_cert.serving_certificate(again, now=due)


def test_a_stored_ca_that_does_not_load_is_a_one_line_error_not_a_traceback() -> None:
    broken = serving_cert.ServingCertRequest(b"not a certificate", b"not a key", dns_names=NAMES)
    with pytest.raises(serving_cert.CertificateNotIssued) as caught:
        serving_cert.serving_certificate(broken)
    message = str(caught.value)
    assert message.startswith("the certificate child failed: breakwater.pki: ValueError")
    assert "Traceback" not in message
    assert "\n" not in message
