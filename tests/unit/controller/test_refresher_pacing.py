"""The status loop shares the event loop with the report channel: a sweep over every policy must not
hold the loop until it ends, or the sidecars' report datagrams wait in the socket (and overflow it).
At 1,000 policies a sweep is a few hundred milliseconds to seconds of computing."""

from __future__ import annotations

import asyncio
from typing import Any

from breakwater.controller.refresher import PolicyRecord, Refresher
from breakwater.controller.reports import FleetStore
from breakwater.controller.resolutions import Resolutions
from breakwater.controller.state import BundleCache, OperatorState

POLICIES = 200


def policy(name: str) -> dict[str, Any]:
    return {
        "metadata": {"namespace": "shop", "name": name, "uid": f"uid-{name}", "generation": 1},
        "spec": {"selector": {"matchLabels": {"app": name}}, "upstreams": [{"name": "payments"}]},
    }


async def test_a_sweep_lets_a_waiting_datagram_in_long_before_its_last_policy() -> None:
    bundles = BundleCache(None)
    bundles.replace(None, {})
    bundles.mark_synced()
    order: list[str] = []
    loop = asyncio.get_running_loop()
    all_refreshed = asyncio.Event()

    def note(what: str) -> None:
        order.append(what)
        if len(order) == POLICIES + 1:
            all_refreshed.set()

    async def on_refresh(record: PolicyRecord) -> None:
        if not order:  # a datagram arrives as the sweep starts
            loop.call_soon(note, "datagram")
        note(record.body["metadata"]["name"])

    async def write_status(namespace: str, name: str, patch: dict[str, Any]) -> dict[str, Any]:
        return patch  # answers at once, as a fast API server does: no refresh waits on I/O

    refresher = Refresher(
        state=OperatorState(api=None, bundles=bundles),
        store=FleetStore(),
        resolutions=Resolutions(bundles, admin_port=9901, proxy_port=9902),
        pods_of=lambda namespace: [],
        write_status=write_status,
        stale_after=30.0,
        on_refresh=on_refresh,
        tick=0.01,
    )
    for i in range(POLICIES):
        refresher.track(policy(f"p{i:03}"))
    task = loop.create_task(refresher.run())
    try:
        await asyncio.wait_for(all_refreshed.wait(), 30)
    finally:
        task.cancel()
    assert sorted(order) == sorted(["datagram", *(f"p{i:03}" for i in range(POLICIES))])
    # The datagram's turn comes after at most one policy per worker, not after all of them.
    assert order.index("datagram") <= refresher.concurrency + 1, order.index("datagram")
