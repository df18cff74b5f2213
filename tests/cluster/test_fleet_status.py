"""End to end: real sidecars for kwok pods report to the operator, and `kubectl get cbp` tells the truth."""

from __future__ import annotations

import json
import time
import urllib.error
import urllib.parse
import urllib.request
from typing import Any

import pytest

from breakwater.testing.operator import OperatorProcess
from breakwater.testing.sidecars import SidecarFleet
from breakwater.testing.upstream import FlakyUpstream
from tests.cluster.harness import (
    breaker_policy,
    call,
    condition,
    opt_in,
    policy,
    start_clients,
    upstream_status,
)
from tests.conftest import Cluster

pytestmark = pytest.mark.cluster


@pytest.fixture(scope="module")
def operator_args() -> tuple[str, ...]:
    return ("--stale-after-seconds=8",)


def test_a_failing_upstream_opens_on_the_resource_within_two_seconds_and_recovers(
    cluster: Cluster,
    namespace: str,
    running_operator: OperatorProcess,
    upstream: FlakyUpstream,
    fleet: SidecarFleet,
) -> None:
    opt_in(cluster, namespace)
    cluster.apply(breaker_policy("payments", upstream.port), namespace=namespace)
    start_clients(cluster, namespace, fleet, replicas=2)
    for sidecar in fleet.sidecars.values():
        assert call(sidecar.url(15210) + "/pay") == 200
    cluster.wait_for(
        "Closed and Ready",
        lambda: (
            upstream_status(cluster, namespace, "payments").get("state") == "Closed"
            and condition(policy(cluster, namespace, "payments"), "Ready").get("status") == "True"
        ),
        timeout=20,
    )

    upstream.failing = True
    for sidecar in fleet.sidecars.values():
        assert [call(sidecar.url(15210) + "/pay") for _ in range(3)] == [500, 500, 500]
    tripped = time.monotonic()
    for sidecar in fleet.sidecars.values():
        assert call(sidecar.url(15210) + "/pay") == 503  # rejected by the open breaker
    cluster.wait_for(
        "state Open on the resource",
        lambda: upstream_status(cluster, namespace, "payments").get("state") == "Open",
        timeout=5,
        interval=0.1,
    )
    latency = time.monotonic() - tripped
    assert latency <= 2.0, f"status showed Open {latency:.2f} s after the trip"
    columns = cluster.kubectl("get", "cbp", "payments", "-n", namespace).stdout
    assert "Open" in columns
    assert "2/2" in columns
    body = policy(cluster, namespace, "payments")
    assert upstream_status(cluster, namespace, "payments")["effective"] == {
        "mode": "Enforce",
        "consecutiveFailures": 3,
        "timeout": "2s",
        "openDuration": "3s",
        "openMaxDuration": "5m",
        "successesToClose": 1,  # the harness policy's halfOpen
        "source": {  # not tuned
            "consecutiveFailures": "Configured",
            "openDuration": "Configured",
            "openMaxDuration": "Configured",
            "successesToClose": "Configured",
        },
    }
    assert condition(body, "CircuitOpen")["status"] == "True"
    assert "payments open on 2/2 pods" in condition(body, "CircuitOpen")["message"]

    upstream.failing = False
    cluster.wait_for(
        "HalfOpen after the open duration",
        lambda: upstream_status(cluster, namespace, "payments").get("state") == "HalfOpen",
        timeout=10,
        interval=0.2,
    )
    for sidecar in fleet.sidecars.values():
        assert call(sidecar.url(15210) + "/pay") == 200  # the trial call succeeds and closes
    cluster.wait_for(
        "Closed again",
        lambda: upstream_status(cluster, namespace, "payments").get("state") == "Closed",
        timeout=5,
        interval=0.2,
    )
    events = cluster.kubectl(
        "get", "events", "-n", namespace, "--field-selector", "involvedObject.name=payments", "-o", "json"
    ).stdout
    reasons = {e["reason"] for e in json.loads(events)["items"]}
    assert {"UpstreamOpen", "UpstreamHalfOpen", "UpstreamClosed"} <= reasons


def test_observe_mode_rejects_nothing_and_reports_what_would_have_opened(
    cluster: Cluster,
    namespace: str,
    running_operator: OperatorProcess,
    upstream: FlakyUpstream,
    fleet: SidecarFleet,
) -> None:
    opt_in(cluster, namespace)
    cluster.apply(breaker_policy("payments", upstream.port, mode="Observe"), namespace=namespace)
    start_clients(cluster, namespace, fleet, replicas=2)
    upstream.failing = True
    for sidecar in fleet.sidecars.values():
        assert {call(sidecar.url(15210) + "/pay") for _ in range(8)} == {500}  # never a 503 from the breaker
    status = cluster.wait_for(
        "wouldOpen on both pods",
        lambda: (u := upstream_status(cluster, namespace, "payments")).get("wouldOpen") == 2 and u,
        timeout=10,
    )
    assert status["state"] == "Closed"
    assert status["open"] == 0
    circuit = condition(policy(cluster, namespace, "payments"), "CircuitOpen")
    assert (circuit["status"], circuit["reason"]) == ("False", "WouldOpen")


def test_a_forged_report_is_rejected_and_changes_nothing(
    cluster: Cluster,
    namespace: str,
    running_operator: OperatorProcess,
    upstream: FlakyUpstream,
    fleet: SidecarFleet,
) -> None:
    import base64
    import socket
    import ssl

    from breakwater.api import datagram

    opt_in(cluster, namespace)
    cluster.apply(breaker_policy("payments", upstream.port), namespace=namespace)
    start_clients(cluster, namespace, fleet, replicas=2)
    cluster.wait_for(
        "Closed", lambda: upstream_status(cluster, namespace, "payments").get("state") == "Closed", timeout=20
    )
    first, second = list(fleet.sidecars.values())
    context = ssl.create_default_context()
    context.check_hostname, context.verify_mode = False, ssl.CERT_NONE

    def open_session(token: str, pod: str, uid: str) -> tuple[int, dict[str, Any]]:
        url = f"https://127.0.0.1:{running_operator.report_port}{datagram.SESSION_PATH}"
        ask = {"namespace": namespace, "pod": pod, "podUid": uid}
        request = urllib.request.Request(
            url, data=json.dumps(ask).encode(), headers={"Authorization": f"Bearer {token}"}, method="POST"
        )
        try:
            with urllib.request.urlopen(request, timeout=10, context=context) as resp:
                return int(resp.status), json.loads(resp.read())
        except urllib.error.HTTPError as exc:
            return int(exc.code), {}

    first_token = (first.directory / "token").read_text()
    assert open_session(first_token, second.pod, second.uid)[0] == 403  # another pod's token
    assert open_session("not-a-token", second.pod, second.uid)[0] == 401
    status, grant = open_session(first_token, first.pod, first.uid)  # the first pod's own session
    assert status == 200
    first_key = base64.b64decode(grant["key"])

    open_report = {
        "namespace": namespace,
        "pod": second.pod,
        "podUid": second.uid,
        "seq": 10**6,
        "upstreams": [{"name": "payments", "policy": f"{namespace}/payments", "state": "Open"}],
    }
    body = json.dumps(open_report).encode()
    second_session = datagram.Session(namespace, second.pod, second.uid, int(time.time()) + 600).encode()
    forgeries = [
        # the first pod's real session, reporting for the second pod
        datagram.report_datagram(grant["session"], first_key, body),
        # a session id for the second pod, signed with a key the operator did not give for it
        datagram.report_datagram(second_session, first_key, body),
        # garbage
        b"bw1 R nonsense",
    ]
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        for forged in forgeries:
            sock.sendto(forged, ("127.0.0.1", running_operator.report_port))

    def fetch_config(authorization: str, pod: str, uid: str) -> int:
        query = urllib.parse.urlencode({"namespace": namespace, "pod": pod, "uid": uid})
        url = f"https://127.0.0.1:{running_operator.report_port}/v1/config?{query}"
        request = urllib.request.Request(url, headers={"Authorization": authorization})
        try:
            with urllib.request.urlopen(request, timeout=10, context=context) as resp:
                return int(resp.status)
        except urllib.error.HTTPError as exc:
            return int(exc.code)

    # A config fetch proven by the first pod's session: fine for itself, refused for the second pod;
    # a session id for the second pod with a proof made from the first pod's key is refused outright.
    assert (
        fetch_config(datagram.session_authorization(grant["session"], first_key), first.pod, first.uid) == 200
    )
    assert (
        fetch_config(datagram.session_authorization(grant["session"], first_key), second.pod, second.uid)
        == 403
    )
    assert (
        fetch_config(datagram.session_authorization(second_session, first_key), second.pod, second.uid) == 401
    )
    time.sleep(2.5)
    assert upstream_status(cluster, namespace, "payments")["state"] == "Closed"
    log = running_operator.tail(300)
    assert "rejected a forged request (POST /v1/session" in log  # the session request
    assert "claims pod" in log  # the first pod's session, reporting for the second
    assert "bad signature" in log  # a session id for the second pod, with a key never given for it


def test_a_policy_edit_reaches_every_sidecar_through_the_live_channel(
    cluster: Cluster,
    namespace: str,
    running_operator: OperatorProcess,
    upstream: FlakyUpstream,
    fleet: SidecarFleet,
) -> None:
    opt_in(cluster, namespace)
    cluster.apply(breaker_policy("payments", upstream.port), namespace=namespace)
    start_clients(cluster, namespace, fleet, replicas=3)

    def hashes() -> set[str]:
        found = set()
        for sidecar in fleet.sidecars.values():
            with urllib.request.urlopen(sidecar.admin_url + "/stats", timeout=2) as resp:
                found.add(str(json.loads(resp.read())["configHash"]))
        return found

    cluster.wait_for("one config everywhere", lambda: len(hashes()) == 1, timeout=10)
    before = hashes()
    edited = time.monotonic()
    cluster.kubectl(
        "patch", "cbp", "payments", "-n", namespace, "--type=merge", "-p", '{"spec":{"timeout":"900ms"}}'
    )
    cluster.wait_for(
        "the new config on every sidecar", lambda: (h := hashes()) != before and len(h) == 1, interval=0.05
    )
    took = time.monotonic() - edited
    assert took < 3.0, f"the edit took {took:.2f} s (the mounted ConfigMap refreshes only every 60 s here)"
    cluster.wait_for(
        "Ready with the new config",
        lambda: condition(policy(cluster, namespace, "payments"), "Ready").get("status") == "True",
        timeout=15,
    )


def test_after_an_operator_restart_status_is_rebuilt_without_invented_transitions(
    cluster: Cluster,
    namespace: str,
    running_operator: OperatorProcess,
    upstream: FlakyUpstream,
    fleet: SidecarFleet,
) -> None:
    opt_in(cluster, namespace)
    cluster.apply(breaker_policy("payments", upstream.port, open_for="60s"), namespace=namespace)
    start_clients(cluster, namespace, fleet, replicas=2)
    upstream.failing = True
    for sidecar in fleet.sidecars.values():
        for _ in range(3):
            call(sidecar.url(15210) + "/pay")
    cluster.wait_for(
        "Open", lambda: upstream_status(cluster, namespace, "payments").get("state") == "Open", timeout=10
    )

    def event_count() -> int:
        out = cluster.kubectl(
            "get", "events", "-n", namespace, "--field-selector", "involvedObject.name=payments", "-o", "json"
        ).stdout
        return sum(
            int(e.get("count") or 1) for e in json.loads(out)["items"] if e["reason"].startswith("Upstream")
        )

    before = event_count()
    running_operator.stop()
    running_operator.start()
    time.sleep(8)  # several report rounds and status refreshes after the restart
    status = upstream_status(cluster, namespace, "payments")
    assert (status["state"], status["open"]) == ("Open", 2)
    assert event_count() == before
