"""ServingTLS with mounted files: a renewal is served from the next handshake, and a pair that does not
load (tls.crt not matching tls.key) is refused with a clear error while the replica keeps serving the
certificate it had — checked with real TLS handshakes on loopback."""

from __future__ import annotations

import argparse
import asyncio
import ssl
from pathlib import Path

import pytest

from breakwater import pki
from breakwater.controller import settings as operator_settings
from breakwater.controller.webhook import ServingTLS
from breakwater.errors import UnusableCertificate

pytestmark = pytest.mark.timeout(30)


def mounted(cert_dir: Path) -> ServingTLS:
    parser = argparse.ArgumentParser()
    operator_settings.add_arguments(parser)
    args = parser.parse_args([f"--webhook-cert-dir={cert_dir}", "--webhook-url=https://127.0.0.1:9443"])
    return ServingTLS(operator_settings.from_args(args), api=None)


def write_pair(
    cert_dir: Path, ca: pki.CertificateAuthority, *, key_of: pki.CertificateAuthority | None = None
) -> None:
    pair = ca.issue("127.0.0.1", ips=("127.0.0.1",), server=True)
    (cert_dir / "tls.crt").write_bytes(pair.cert_pem)
    other = (key_of or ca).issue("127.0.0.1", ips=("127.0.0.1",), server=True)
    (cert_dir / "tls.key").write_bytes(pair.key_pem if key_of is None else other.key_pem)
    (cert_dir / "ca.crt").write_bytes(ca.cert_pem)


async def handshake(tls: ServingTLS, ca: pki.CertificateAuthority) -> bool:
    """Whether a client trusting `ca` completes a TLS handshake with a server on `tls.context`."""
    server = await asyncio.start_server(lambda r, w: w.close(), "127.0.0.1", 0, ssl=tls.context)
    port = server.sockets[0].getsockname()[1]
    client = ssl.create_default_context(cadata=ca.cert_pem.decode())
    try:
        _, writer = await asyncio.open_connection("127.0.0.1", port, ssl=client)
        writer.close()
        return True
    except ssl.SSLError:
        return False
    finally:
        server.close()
        await server.wait_closed()


async def test_a_renewal_is_served_and_a_mismatched_pair_is_refused_keeping_the_current_one(
    tmp_path: Path,
) -> None:
    first, second, third = (pki.CertificateAuthority(f"ca-{n}") for n in range(3))
    write_pair(tmp_path, first)
    tls = mounted(tmp_path)
    await tls.load(leader=lambda: False)
    assert await handshake(tls, first)

    renewed: list[bool] = []
    tls.listeners.append(lambda: renewed.append(True))
    write_pair(tmp_path, second)
    assert await tls.refresh(leader=False)
    assert renewed == [True]
    assert await handshake(tls, second)
    assert not await handshake(tls, first)

    write_pair(tmp_path, third, key_of=first)  # a certificate with another certificate's key
    with pytest.raises(UnusableCertificate, match="cannot be served"):
        await tls.refresh(leader=False)
    assert renewed == [True]
    assert tls.ca_pem == second.cert_pem
    assert await handshake(tls, second)  # still the last good one
