"""A leader that hands over writes its histories; the next one, with a new Adaptation, reads them."""

from __future__ import annotations

from typing import Any

import pytest

from breakwater.api.report import SidecarReport, UpstreamReport
from breakwater.controller import adaptive
from breakwater.controller.adaptive import Adaptation

POLICY = "shop/payments"
WALL = 1_800_000_000.0


class FakeConfigMaps:
    """The history ConfigMaps, by (namespace, name), with the calls of `k8s.configmaps` the state makes."""

    def __init__(self) -> None:
        self.data: dict[tuple[str, str], dict[str, str]] = {}
        self.writes = 0

    def read(self, api: Any, *, namespace: str, name: str) -> dict[str, str]:
        return dict(self.data.get((namespace, name), {}))

    def put_key(self, api: Any, *, namespace: str, name: str, key: str, value: str, **_: Any) -> bool:
        self.data.setdefault((namespace, name), {})[key] = value
        self.writes += 1
        return True


@pytest.fixture
def configmaps(monkeypatch: pytest.MonkeyPatch) -> FakeConfigMaps:
    fake = FakeConfigMaps()
    monkeypatch.setattr(adaptive.configmaps, "read", fake.read)
    monkeypatch.setattr(adaptive.configmaps, "put_key", fake.put_key)
    return fake


def body() -> dict[str, Any]:
    return {
        "metadata": {"name": "payments", "namespace": "shop", "generation": 1},
        "spec": {
            "selector": {"matchLabels": {"app": "checkout"}},
            "upstreams": [{"name": "payments", "host": "127.0.0.1", "port": 8080, "listenPort": 15210}],
            "trip": {"consecutiveFailures": 5, "failureRate": {"percent": 50}},
            "adaptive": {"enabled": True},
        },
    }


def report(calls: int, failures: int) -> SidecarReport:
    upstream = UpstreamReport(
        name="payments", policy=POLICY, state="Closed", calls=calls, failures=failures, latency=[0] * 14
    )
    return SidecarReport(namespace="shop", pod="checkout-1", upstreams=[upstream])


def calls_in(a: Adaptation) -> int:
    history = a.tunings[(POLICY, "payments")].history
    return sum(totals.calls for _, totals in history.buckets(WALL + 60))


async def test_the_next_leader_starts_from_the_histories_the_last_one_flushed(
    configmaps: FakeConfigMaps,
) -> None:
    first = Adaptation(api=None)
    await first.load("shop")
    first.configure(POLICY, body())
    first.ingest(report(0, 0), now=WALL)
    first.ingest(report(500, 20), now=WALL + 5)
    assert calls_in(first) == 500
    await first.flush()  # the term ends
    assert configmaps.writes == 1

    second = Adaptation(api=None)  # the new leader's term
    await second.load("shop")
    second.configure(POLICY, body())
    assert calls_in(second) == 500
    second.ingest(report(900, 20), now=WALL + 10)  # its first report of the pod: a baseline only
    second.ingest(report(1000, 21), now=WALL + 15)
    assert calls_in(second) == 600


async def test_a_namespace_not_read_back_yet_is_not_overwritten(configmaps: FakeConfigMaps) -> None:
    a = Adaptation(api=None)
    a.configure(POLICY, body())
    a.ingest(report(0, 0), now=WALL)
    await a.flush()
    assert configmaps.writes == 0
