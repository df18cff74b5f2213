"""The operator's report server as a real instance on loopback, driven by real HTTPS and UDP clients:
sessions from pod-bound tokens (checked by the real API server's TokenReview), signed report
datagrams and their answers, config fetches, and every way a report is refused."""

from __future__ import annotations

import asyncio
import base64
import json
import socket
import ssl
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import aiohttp
import pytest

from breakwater import pki
from breakwater.api import datagram
from breakwater.api.bundle import bundle_key
from breakwater.api.constants import CONFIGMAP_NAME, TOKEN_AUDIENCE
from breakwater.api.report import SidecarReport, UpstreamReport
from breakwater.controller.reports import FleetStore, ReportServer
from breakwater.controller.state import BundleCache, configmap_bundles
from breakwater.injection.render import render_bundle
from breakwater.injection.resolve import resolve
from breakwater.k8s import configmaps
from breakwater.k8s.listwatch import BUNDLES, ListWatch
from breakwater.testing.controlplane import free_port
from tests.cluster.harness import RESTRICTED_CONTAINER, install_crd, policy, policy_manifest
from tests.conftest import Cluster

pytestmark = pytest.mark.cluster
LABELS = {"app": "checkout"}


@dataclass
class Pod:
    name: str
    uid: str
    token: str


def make_pod(cluster: Cluster, namespace: str, name: str) -> Pod:
    body = {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": name, "labels": LABELS},
        "spec": {
            "nodeName": cluster.node_name,
            "containers": [{"name": "app", "image": "app:1", **RESTRICTED_CONTAINER}],
        },
    }
    cluster.apply(json.dumps(body), namespace=namespace)
    uid = cluster.kubectl("get", "pod", name, "-n", namespace, "-o", "jsonpath={.metadata.uid}").stdout
    token = cluster.kubectl(
        "create", "token", "default", "-n", namespace, f"--audience={TOKEN_AUDIENCE}",
        "--bound-object-kind=Pod", f"--bound-object-name={name}", f"--bound-object-uid={uid}",
    ).stdout.strip()  # fmt: skip
    return Pod(name, uid, token)


class Channel:
    """A sidecar's end of the channel: HTTPS to the server, and a UDP socket for datagrams."""

    def __init__(self, server: ReportServer, ca: ssl.SSLContext, namespace: str) -> None:
        self.server, self.namespace = server, namespace
        self.http = aiohttp.ClientSession(connector=aiohttp.TCPConnector(ssl=ca))
        self.udp = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.udp.bind(("127.0.0.1", 0))
        self.udp.settimeout(5)

    @property
    def base(self) -> str:
        return f"https://127.0.0.1:{self.server.port}"

    async def session(self, token: str, pod: str, uid: str = "") -> tuple[int, Any]:
        body = {"namespace": self.namespace, "pod": pod, "podUid": uid}
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        async with self.http.post(self.base + datagram.SESSION_PATH, json=body, headers=headers) as resp:
            text = await resp.text()
            return resp.status, (datagram.SessionGrant.from_json(text) if resp.status == 200 else text)

    def report(self, session: str, key: bytes, pod: str, seq: int, *, state: str = "Closed") -> bytes:
        report = SidecarReport(
            namespace=self.namespace, pod=pod, seq=seq, config_hash="old",
            upstreams=[UpstreamReport(name="payments", policy=f"{self.namespace}/payments", state=state)],
        )  # fmt: skip
        self.udp.sendto(
            datagram.report_datagram(session, key, report.model_dump_json(by_alias=True).encode()),
            ("127.0.0.1", self.server.port),
        )
        return self.udp.recv(65536)

    async def close(self) -> None:
        await self.http.close()
        self.udp.close()


@pytest.fixture
async def channel(cluster: Cluster, namespace: str) -> AsyncIterator[Channel]:
    install_crd(cluster)
    cluster.apply(policy_manifest("payments"), namespace=namespace)
    api = cluster.api_client()
    bundle = render_bundle(policy(cluster, namespace, "payments"))
    configmaps.put_key(
        api, namespace=namespace, name=CONFIGMAP_NAME, key=bundle_key("payments"), value=bundle.to_json()
    )
    ca = pki.CertificateAuthority("report-server-test")
    pair = ca.issue("127.0.0.1", ips=("127.0.0.1",), server=True)
    serving = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    cert, key = cluster.kubeconfig.parent / "report.crt", cluster.kubeconfig.parent / "report.key"
    cert.write_bytes(pair.cert_pem)
    key.write_bytes(pair.key_pem)
    serving.load_cert_chain(cert, key)
    bundles = BundleCache(api)  # fed by a watch of the ConfigMaps, as in the operator
    watch = ListWatch(api, bundles, configmap_bundles, resource=BUNDLES, namespaces=[namespace])
    watch.start(asyncio.get_running_loop())
    server = ReportServer(
        api=api,
        bundles=bundles,
        store=FleetStore(),
        pod_labels=lambda ns, pod: tuple(sorted(LABELS.items())),
        secret=b"a test secret of the report channel",
    )
    await server.start(host="127.0.0.1", port=free_port(), ssl_context=serving)
    trusting = ssl.create_default_context(cadata=ca.cert_pem.decode())
    client = Channel(server, trusting, namespace)
    try:
        yield client
    finally:
        await client.close()
        await server.stop()
        await asyncio.to_thread(watch.stop)


def answer(data: bytes, key: bytes) -> datagram.ReportAnswer:
    kind, fields = datagram.parse(data)
    assert kind == datagram.ANSWER, data
    return datagram.open_answer(key, fields)


async def test_a_pod_bound_token_opens_a_session_whose_reports_are_answered_with_the_hash_to_run(
    cluster: Cluster, namespace: str, channel: Channel
) -> None:
    pod = await asyncio.to_thread(make_pod, cluster, namespace, "client-1")
    status, grant = await channel.session(pod.token, pod.name, pod.uid)
    assert status == 200, grant
    key = base64.b64decode(grant.key)
    bundle = render_bundle(policy(cluster, namespace, "payments"))
    wanted = resolve(LABELS, [bundle]).config_hash

    got = await asyncio.to_thread(channel.report, grant.session, key, pod.name, 1, state="Open")
    assert (answer(got, key).seq, answer(got, key).config_hash) == (1, wanted)
    stored = channel.server.store.in_namespace(namespace)[pod.name]
    assert [(u.name, u.state) for u in stored.upstreams] == [("payments", "Open")]

    # The sidecar runs another hash than it should: it fetches the config, proving its session.
    headers = {"Authorization": datagram.session_authorization(grant.session, key)}
    async with channel.http.get(f"{channel.base}/v1/config?hash=old", headers=headers) as resp:
        reply = await resp.json()
    assert resp.status == 200
    assert reply["configHash"] == wanted
    assert [u["name"] for u in reply["config"]["upstreams"]] == ["payments"]


async def test_replayed_forged_and_unsigned_reports_change_nothing(
    cluster: Cluster, namespace: str, channel: Channel
) -> None:
    first = await asyncio.to_thread(make_pod, cluster, namespace, "client-1")
    second = await asyncio.to_thread(make_pod, cluster, namespace, "client-2")
    _, grant = await channel.session(first.token, first.name, first.uid)
    key = base64.b64decode(grant.key)
    await asyncio.to_thread(channel.report, grant.session, key, first.name, 5)
    server = channel.server

    def dropped(send: Any) -> None:
        channel.udp.settimeout(1)
        with pytest.raises(TimeoutError):  # no answer to a dropped report
            send()
        channel.udp.settimeout(5)

    await asyncio.to_thread(dropped, lambda: channel.report(grant.session, key, first.name, 5))
    assert server.rejected.get("replayed") == 1
    await asyncio.to_thread(dropped, lambda: channel.report(grant.session, key, second.name, 6))
    assert server.rejected.get("claims-other-pod") == 1
    renewed = await asyncio.to_thread(channel.report, grant.session, b"not the key", first.name, 7)
    assert datagram.parse(renewed)[0] == datagram.RENEW  # "open a new session"
    assert server.rejected.get("bad-signature") == 1
    assert server.store.forged == 2
    assert second.name not in server.store.in_namespace(namespace)


async def test_a_session_is_refused_without_a_token_and_for_another_pod_than_the_token_is_bound_to(
    cluster: Cluster, namespace: str, channel: Channel
) -> None:
    first = await asyncio.to_thread(make_pod, cluster, namespace, "client-1")
    second = await asyncio.to_thread(make_pod, cluster, namespace, "client-2")
    assert (await channel.session("", first.name))[0] == 401
    assert (await channel.session("not-a-token", first.name))[0] == 401
    status, text = await channel.session(first.token, second.name, second.uid)
    assert status == 403
    assert f"belongs to pod {namespace}/{first.name}" in text
    assert channel.server.store.forged == 1
