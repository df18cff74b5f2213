"""A stopping replica's admission server hands the API server's connections over before it stops.

The API server keeps its keep-alive connections to a replica whatever the endpoints say, so a replica
that only closed them when it stopped cut reviews in flight: each one a pod admitted without the
sidecar (found on the real node during a `helm upgrade`: "failed calling webhook ... EOF").
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from typing import Any

import pytest

from breakwater.controller.admission import PolicyView
from breakwater.controller.admission_server import AdmissionServer
from breakwater.controller.settings import OperatorSettings
from breakwater.controller.state import BundleCache
from breakwater.k8s.webhooks import EXPECT_POLICY_ID

REVIEW = json.dumps(
    {
        "apiVersion": "admission.k8s.io/v1",
        "kind": "AdmissionReview",
        "request": {"uid": "u-1", "namespace": "shop", "object": {"metadata": {"name": "payments"}}},
    }
).encode()


class NoReads:
    async def get_policy(self, namespace: str, name: str) -> dict[str, Any] | None:
        raise AssertionError("a policy CREATE review reads nothing")

    async def list_policies(self, namespace: str) -> list[dict[str, Any]]:
        raise AssertionError("a policy CREATE review reads nothing")


@pytest.fixture
async def server() -> AsyncIterator[AdmissionServer]:
    admissions = AdmissionServer(
        settings=OperatorSettings(),
        view=PolicyView(),
        reads=NoReads(),
        bundles=BundleCache(api=None),
        ca_pem=lambda: b"",
    )
    await admissions.start(host="127.0.0.1", port=0, ssl_context=None)
    yield admissions
    await admissions.stop()


def port_of(server: AdmissionServer) -> int:
    assert server._runner is not None
    (address,) = server._runner.addresses
    return int(address[1])


async def review(writer: asyncio.StreamWriter, reader: asyncio.StreamReader) -> dict[str, str]:
    """One review over a kept connection, as the API server sends it; the answer's headers."""
    writer.write(
        f"POST /{EXPECT_POLICY_ID} HTTP/1.1\r\nHost: webhook\r\nContent-Type: application/json\r\n"
        f"Content-Length: {len(REVIEW)}\r\n\r\n".encode()
        + REVIEW
    )
    await writer.drain()
    head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 10)
    status, *lines = head.decode().split("\r\n")
    assert status.startswith("HTTP/1.1 200"), status
    headers = dict(line.split(": ", 1) for line in lines if line)
    body = await reader.readexactly(int(headers["Content-Length"]))
    assert json.loads(body)["response"] == {"uid": "u-1", "allowed": True}
    return {k.lower(): v.lower() for k, v in headers.items()}


async def closed_by_server(reader: asyncio.StreamReader) -> bool:
    return await asyncio.wait_for(reader.read(1), 10) == b""


async def test_drain_closes_an_idle_kept_connection_so_the_next_review_takes_a_new_one(
    server: AdmissionServer,
) -> None:
    reader, writer = await asyncio.open_connection("127.0.0.1", port_of(server))
    headers = await review(writer, reader)
    assert headers.get("connection") != "close", "kept alive while the replica serves"
    server.drain()
    assert await closed_by_server(reader)
    writer.close()


async def test_a_review_answered_while_draining_says_connection_close_and_the_connection_ends(
    server: AdmissionServer,
) -> None:
    server.drain()
    # A connection opened during the shutdown delay (kube-proxy still routes to the replica) is served.
    reader, writer = await asyncio.open_connection("127.0.0.1", port_of(server))
    headers = await review(writer, reader)
    assert headers["connection"] == "close"
    assert await closed_by_server(reader)
    writer.close()
