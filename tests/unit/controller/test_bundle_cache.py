"""BundleCache: every replica's view of the sidecar ConfigMaps, fed by a watch, with the leader's own
writes on top until the watch shows them.

The watch's side is driven here the way `ListWatch` drives it (`replace`, `apply`, `mark_synced`, on
the loop): the orderings that matter (a write the watch has not delivered yet, an older event that
arrives after it) cannot be produced on demand by a real API server. Fed by the real watch, on the
real API server, it runs in tests/cluster/test_report_server.py and in every operator suite.
"""

from __future__ import annotations

import asyncio

import pytest

from breakwater.api.bundle import PolicyBundle, bundle_key
from breakwater.api.constants import CONFIGMAP_NAME
from breakwater.api.sidecar import UpstreamConfig
from breakwater.controller.state import BundleCache, configmap_bundles

pytestmark = pytest.mark.timeout(30)

NS = "shop"


def bundle(name: str, generation: int = 1, *, host: str = "payments.shop") -> PolicyBundle:
    return PolicyBundle(
        policy=f"{NS}/{name}",
        created="2026-01-01T00:00:00Z",
        generation=generation,
        selector={"matchLabels": {"app": "checkout"}},
        upstreams=[UpstreamConfig(name=name, host=host, port=8080)],
    )


def watched(*bundles: PolicyBundle) -> dict[str, PolicyBundle]:
    """What the watch delivers for the namespace's ConfigMap: its bundles, parsed as the watch does."""
    configmap = {
        "metadata": {"name": CONFIGMAP_NAME, "namespace": NS},
        "data": {bundle_key(b.name): b.to_json() for b in bundles},
    }
    return configmap_bundles(configmap)


def synced_cache(*bundles: PolicyBundle) -> tuple[BundleCache, list[str]]:
    cache = BundleCache(api=None)
    cache.replace(None, {NS: {CONFIGMAP_NAME: watched(*bundles)}} if bundles else {})
    cache.mark_synced()
    heard: list[str] = []
    cache.listeners.append(heard.append)
    return cache, heard


def test_the_configmap_is_parsed_and_unreadable_keys_are_skipped() -> None:
    a = bundle("a")
    configmap = {
        "metadata": {"name": CONFIGMAP_NAME, "namespace": NS},
        "data": {bundle_key("a"): a.to_json(), "notes.txt": "x", "broken.json": "{"},
    }
    assert configmap_bundles(configmap) == {"a": a}


async def test_the_watch_decides_what_get_returns_and_a_change_tells_the_listeners() -> None:
    a1, a2, c = bundle("a", 1), bundle("a", 2, host="edited.shop"), bundle("c")
    cache, heard = synced_cache(a1)
    assert await cache.get(NS) == {"a": a1}
    assert await cache.get("elsewhere") == {}

    listed = cache.version(NS)
    cache.replace(None, {NS: {CONFIGMAP_NAME: watched(a1)}})  # a relist that finds nothing new
    assert (cache.version(NS), heard) == (listed, [])

    waiter = asyncio.create_task(cache.wait_change(NS, cache.version(NS), within=5.0))
    await asyncio.sleep(0)
    cache.apply([(NS, CONFIGMAP_NAME, watched(a2, c))])  # the leader (another replica) wrote
    assert await cache.get(NS) == {"a": a2, "c": c}
    assert (cache.version(NS), heard) == (listed + 1, [NS])
    await asyncio.wait_for(waiter, 1.0)  # a long poll waiting on the namespace wakes up

    cache.apply([(NS, CONFIGMAP_NAME, None)])  # the ConfigMap deleted
    assert await cache.get(NS) == {}
    assert heard == [NS, NS]


async def test_other_configmaps_of_a_namespace_are_ignored() -> None:
    cache, heard = synced_cache(bundle("a"))
    cache.apply([(NS, "something-else", {})])
    assert (await cache.get(NS)).keys() == {"a"}
    assert heard == []


async def test_a_write_is_seen_at_once_and_an_older_event_after_it_does_not_undo_it() -> None:
    old_a, new_a = bundle("a", 1), bundle("a", 2, host="payments-v2.shop")
    cache, heard = synced_cache(old_a)
    cache.put(NS, new_a)  # the leader wrote it; the watch has not delivered it yet
    assert await cache.get(NS) == {"a": new_a}
    assert heard == [NS]

    cache.apply([(NS, CONFIGMAP_NAME, watched(old_a))])  # an event from before the write, late
    assert await cache.get(NS) == {"a": new_a}
    assert heard == [NS]

    cache.apply([(NS, CONFIGMAP_NAME, watched(new_a))])  # the watch shows the write: it takes over
    cache.apply([(NS, CONFIGMAP_NAME, watched(old_a))])  # so a later change by anyone is seen
    assert await cache.get(NS) == {"a": old_a}


async def test_a_removal_hides_the_bundle_until_the_watch_shows_it_gone() -> None:
    a, b = bundle("a"), bundle("b")
    cache, heard = synced_cache(a, b)
    cache.remove(NS, "b")
    assert await cache.get(NS) == {"a": a}
    cache.apply([(NS, CONFIGMAP_NAME, watched(a, b))])  # still there, as of an older event
    assert await cache.get(NS) == {"a": a}
    cache.apply([(NS, CONFIGMAP_NAME, watched(a))])
    assert await cache.get(NS) == {"a": a}
    cache.put(NS, b)  # created again
    assert (await cache.get(NS)).keys() == {"a", "b"}
    assert heard == [NS, NS]


async def test_a_put_of_what_the_configmap_already_holds_changes_nothing() -> None:
    a = bundle("a")
    cache, heard = synced_cache(a)
    listed = cache.version(NS)
    cache.put(NS, a)
    assert (cache.version(NS), heard) == (listed, [])


async def test_a_replica_that_stops_leading_forgets_its_writes_the_watch_never_showed() -> None:
    a1, a2 = bundle("a", 1), bundle("a", 2)
    cache, heard = synced_cache(a1)
    cache.put(NS, a2)  # written, then another replica took over and wrote something else
    cache.forget_writes()
    assert await cache.get(NS) == {"a": a1}
    assert heard == [NS, NS]


async def test_a_namespace_relist_replaces_only_that_namespace() -> None:
    a = bundle("a")
    cache, _ = synced_cache(a)
    cache.replace("billing", {})
    assert await cache.get(NS) == {"a": a}
    cache.replace(NS, {})
    assert await cache.get(NS) == {}
