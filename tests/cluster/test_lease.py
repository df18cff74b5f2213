"""LeaseElector against the real API server: one leader among candidates, a release on stop that
hands over at once, a takeover only after the Lease expired, and a holder that steps down when it can
no longer renew."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Callable
from typing import Any

import pytest

from breakwater.k8s.aio import AsyncApi
from breakwater.k8s.lease import REPORTS_ANNOTATION, LeaseElector
from tests.conftest import Cluster

pytestmark = [pytest.mark.cluster, pytest.mark.timeout(120)]


@pytest.fixture
async def api(cluster: Cluster) -> AsyncIterator[AsyncApi]:
    api = AsyncApi(cluster.api_client())
    yield api
    await api.close()


class Candidate:
    """An elector running in the background, recording each leadership change with its time."""

    def __init__(self, api: Any, namespace: str, identity: str, *, lease_seconds: float = 3.0) -> None:
        self.changes: list[tuple[bool, float]] = []
        self.elector = LeaseElector(
            api=api,
            namespace=namespace,
            name="breakwater-leader",
            identity=identity,
            reports_address=f"127.0.0.1:{9000 + len(identity)}",
            lease_seconds=lease_seconds,
            renew_every=lease_seconds / 5,
            on_change=self._changed,
        )
        self.task = asyncio.get_running_loop().create_task(self.elector.run())

    async def _changed(self, leader: bool) -> None:
        self.changes.append((leader, time.monotonic()))

    async def stop(self) -> None:
        await self.elector.stop()
        await asyncio.wait_for(self.task, 15)


async def until(check: Callable[[], bool], *, within: float = 20.0) -> float:
    """When `check()` first held (polled every 50 ms); fails after `within` seconds."""
    start = time.monotonic()
    while not check():
        assert time.monotonic() - start < within, "timed out"
        await asyncio.sleep(0.05)
    return time.monotonic()


def holder(cluster: Cluster, namespace: str) -> str:
    return cluster.kubectl(
        "get", "lease", "breakwater-leader", "-n", namespace, "-o", "jsonpath={.spec.holderIdentity}"
    ).stdout


async def test_one_of_three_leads_and_the_others_know_its_report_address(
    cluster: Cluster, namespace: str, api: AsyncApi
) -> None:
    candidates = [Candidate(api, namespace, name) for name in ("a", "bb", "ccc")]
    try:
        await until(lambda: any(c.elector.leader for c in candidates))
        await asyncio.sleep(2.0)  # several renewals: nobody else takes it meanwhile
        leaders = [c for c in candidates if c.elector.leader]
        assert len(leaders) == 1
        leader = leaders[0]
        assert [c.changes for c in candidates if c is not leader] == [[], []]
        assert holder(cluster, namespace) == leader.elector.identity
        for other in candidates:
            await until(lambda other=other: other.elector.holder == leader.elector.identity)  # type: ignore[misc]
            assert other.elector.holder_reports == leader.elector.reports_address
        annotations = cluster.kubectl(
            "get", "lease", "breakwater-leader", "-n", namespace, "-o", "jsonpath={.metadata.annotations}"
        ).stdout
        assert REPORTS_ANNOTATION in annotations
    finally:
        await asyncio.gather(*(c.stop() for c in candidates))


async def test_a_stopping_leader_releases_and_another_takes_over_within_a_renewal(
    namespace: str, api: AsyncApi
) -> None:
    first = Candidate(api, namespace, "first", lease_seconds=10.0)
    await until(lambda: first.elector.leader)
    second = Candidate(api, namespace, "second", lease_seconds=10.0)
    try:
        await until(lambda: second.elector.holder == "first")
        stopped = time.monotonic()
        await first.stop()
        assert first.changes[-1][0] is False  # it stepped down before releasing
        taken = await until(lambda: second.elector.leader)
        # a 10 s lease, yet the release hands over within a renewal period (2 s) and the round's writes
        assert taken - stopped < 6.0
    finally:
        await second.stop()


async def test_a_lease_not_renewed_is_taken_over_only_after_it_expired(
    cluster: Cluster, namespace: str, api: AsyncApi
) -> None:
    first = Candidate(api, namespace, "first", lease_seconds=3.0)
    await until(lambda: first.elector.leader)
    first.task.cancel()  # the leader vanishes without a word (SIGKILL): no release
    await asyncio.gather(first.task, return_exceptions=True)
    vanished = time.monotonic()
    second = Candidate(api, namespace, "second", lease_seconds=3.0)
    try:
        taken = await until(lambda: second.elector.leader)
        assert taken - vanished >= 3.0  # never before the Lease's duration has passed
        assert holder(cluster, namespace) == "second"
        transitions = cluster.kubectl(
            "get", "lease", "breakwater-leader", "-n", namespace, "-o", "jsonpath={.spec.leaseTransitions}"
        ).stdout
        assert transitions == "1"
    finally:
        await second.stop()


class Unreachable:
    """The API server as a holder sees it when its network goes: every request fails."""

    def __init__(self, api: Any) -> None:
        self.api, self.down = api, False

    async def request(self, method: str, path: str, body: Any = None, **kw: Any) -> dict[str, Any]:
        if self.down:
            raise ConnectionError("the API server is unreachable")
        result: dict[str, Any] = await self.api.request(method, path, body, **kw)
        return result


async def test_a_leader_that_cannot_renew_steps_down_before_another_may_take_over(
    namespace: str, api: AsyncApi
) -> None:
    cut = Unreachable(api)
    first = Candidate(cut, namespace, "first", lease_seconds=3.0)
    await until(lambda: first.elector.leader)
    second = Candidate(api, namespace, "second", lease_seconds=3.0)
    try:
        await until(lambda: second.elector.holder == "first")
        cut.down = True
        stepped_down = await until(lambda: not first.elector.leader)
        taken = await until(lambda: second.elector.leader)
        assert stepped_down < taken  # never two leaders at once
        cut.down = False
        await asyncio.sleep(2.0)
        assert not first.elector.leader  # back online, it finds the Lease held and stays a candidate
    finally:
        await asyncio.gather(first.stop(), second.stop())
