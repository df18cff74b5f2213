"""Which stored webhook certificates the operator keeps: a restart must reuse the Secret's CA, or every
sidecar created before it (trusting the old CA for its report channel) stops reporting."""

from __future__ import annotations

import datetime

from breakwater import pki
from breakwater.k8s import secrets

NAMES = ("bw.breakwater-system.svc",)


def test_a_stored_ca_is_reused_while_it_has_more_than_30_days_left() -> None:
    """Found on a real node: the CA (which has no SANs) never counted as usable, so every operator
    restart made a new CA and rewrote the webhook's caBundle."""
    ca = pki.CertificateAuthority("breakwater-webhook-ca", validity=secrets.CA_VALIDITY)
    assert secrets._usable(ca.cert_pem, dns_names=(), ips=())
    ending = pki.CertificateAuthority("breakwater-webhook-ca", validity=datetime.timedelta(days=10))
    assert not secrets._usable(ending.cert_pem, dns_names=(), ips=())


def test_a_serving_certificate_is_reused_only_for_the_names_it_covers() -> None:
    ca = pki.CertificateAuthority("breakwater-webhook-ca", validity=secrets.CA_VALIDITY)
    pair = ca.issue(NAMES[0], dns_names=NAMES, server=True, validity=secrets.SERVING_VALIDITY)
    assert secrets._usable(pair.cert_pem, dns_names=NAMES, ips=())
    assert not secrets._usable(pair.cert_pem, dns_names=("other.ns.svc",), ips=())
    assert not pki.covers(ca.cert_pem, dns_names=NAMES)
