"""BundleCache: the operator's own writes win over a ConfigMap read that was in flight.

`BundleCache.get` reads the namespace's ConfigMap with `configmaps.read` in a worker thread
(`asyncio.to_thread`). The race it must survive is a `put()` or `remove()` landing while that read is
in flight. A real API server cannot be made to answer at a chosen instant, so here - and only here -
`configmaps.read` is replaced by a stand-in that blocks on a `threading.Event` until the test has
done its interleaving, then returns the ConfigMap data the test chose.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Iterator
from typing import Any

import pytest

from breakwater.api.bundle import PolicyBundle, bundle_key
from breakwater.api.constants import CONFIGMAP_NAME
from breakwater.api.sidecar import UpstreamConfig
from breakwater.controller.state import BundleCache
from breakwater.k8s import configmaps

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


def configmap_data(*bundles: PolicyBundle) -> dict[str, str]:
    return {bundle_key(b.name): b.to_json() for b in bundles}


class ConfigMapRead:
    """Stands in for `configmaps.read`: returns `data`, after `release` is set when `blocking`."""

    def __init__(self) -> None:
        self.data: dict[str, str] = {}
        self.calls: list[tuple[str, str]] = []
        self.entered = threading.Event()
        self.release = threading.Event()
        self.blocking = False

    def __call__(self, api: Any, *, namespace: str, name: str) -> dict[str, str]:
        self.calls.append((namespace, name))
        data = dict(self.data)  # what the API server answered: the ConfigMap as it was at the read
        self.entered.set()
        if self.blocking:
            assert self.release.wait(10), "the test never released the read"
        return data

    async def in_flight(self) -> None:
        """Return once a read has started (and is blocked)."""
        assert await asyncio.to_thread(self.entered.wait, 5), "no ConfigMap read started"


@pytest.fixture
def read(monkeypatch: pytest.MonkeyPatch) -> Iterator[ConfigMapRead]:
    stand_in = ConfigMapRead()
    monkeypatch.setattr(configmaps, "read", stand_in)
    yield stand_in
    stand_in.release.set()  # never leave a worker thread blocked


def cache_with_listener(ttl: float = 30.0) -> tuple[BundleCache, list[str]]:
    cache = BundleCache(api=object(), ttl=ttl)
    heard: list[str] = []
    cache.listeners.append(heard.append)
    return cache, heard


async def test_a_miss_reads_the_namespaces_configmap_once_and_caches_it(read: ConfigMapRead) -> None:
    a = bundle("a")
    read.data = {**configmap_data(a), "not-a-bundle.txt": "x", "broken.json": "{"}
    cache, heard = cache_with_listener()
    assert await cache.get(NS) == {"a": a}
    assert await cache.get(NS) == {"a": a}
    assert read.calls == [(NS, CONFIGMAP_NAME)]
    assert heard == []
    assert cache.version(NS) == 0


async def test_a_put_while_the_first_read_is_in_flight_is_returned_and_cached(read: ConfigMapRead) -> None:
    old_a, new_a, b = bundle("a", 1), bundle("a", 2, host="payments-v2.shop"), bundle("b")
    read.data = configmap_data(old_a)  # the read sees the ConfigMap before our write landed
    read.blocking = True
    cache, heard = cache_with_listener()
    getting = asyncio.create_task(cache.get(NS))
    await read.in_flight()

    cache.put(NS, new_a)  # a policy reconciled meanwhile: its bundle is written...
    cache.put(NS, b)  # ...and a new policy's too
    assert heard == [NS, NS]
    read.release.set()

    assert await getting == {"a": new_a, "b": b}
    assert await cache.get(NS) == {"a": new_a, "b": b}  # cached as such: no second read
    assert len(read.calls) == 1
    assert cache.version(NS) == 2  # the two puts; the read found nothing else changed


async def test_a_put_while_a_refresh_is_in_flight_wins_over_the_stale_read(read: ConfigMapRead) -> None:
    old_a, new_a = bundle("a", 1), bundle("a", 2, host="payments-v2.shop")
    read.data = configmap_data(old_a)
    cache, heard = cache_with_listener(ttl=0.05)
    assert await cache.get(NS) == {"a": old_a}
    await asyncio.sleep(0.06)  # the entry is now older than the ttl: the next get re-reads

    read.blocking = True
    read.entered.clear()
    getting = asyncio.create_task(cache.get(NS))
    await read.in_flight()
    cache.put(NS, new_a)
    read.release.set()

    assert await getting == {"a": new_a}
    assert heard == [NS]  # the put; the refresh itself is no change
    assert cache.version(NS) == 1


async def test_a_remove_while_a_read_is_in_flight_drops_the_bundle(read: ConfigMapRead) -> None:
    a, b = bundle("a"), bundle("b")
    read.data = configmap_data(a, b)  # the ConfigMap still had b's key when it was read
    read.blocking = True
    cache, heard = cache_with_listener()
    getting = asyncio.create_task(cache.get(NS))
    await read.in_flight()
    cache.remove(NS, "b")
    read.release.set()

    assert await getting == {"a": a}
    assert await cache.get(NS) == {"a": a}
    assert heard == [NS]
    assert len(read.calls) == 1


async def test_a_remove_then_a_put_of_the_same_policy_during_a_read_keeps_the_put(
    read: ConfigMapRead,
) -> None:
    old_a, new_a = bundle("a", 1), bundle("a", 3)
    read.data = configmap_data(old_a)
    read.blocking = True
    cache, _ = cache_with_listener()
    getting = asyncio.create_task(cache.get(NS))
    await read.in_flight()
    cache.remove(NS, "a")
    cache.put(NS, new_a)  # the policy was deleted and created again
    read.release.set()
    assert await getting == {"a": new_a}


async def test_a_bundle_changed_behind_our_back_bumps_the_version_and_tells_the_listeners(
    read: ConfigMapRead,
) -> None:
    a1, a2, c = bundle("a", 1), bundle("a", 2, host="edited.shop"), bundle("c")
    read.data = configmap_data(a1)
    cache, heard = cache_with_listener(ttl=0.05)
    assert await cache.get(NS) == {"a": a1}
    await asyncio.sleep(0.06)
    assert await cache.get(NS) == {"a": a1}  # re-read, unchanged: no bump
    assert (cache.version(NS), heard) == (0, [])

    read.data = configmap_data(a2, c)  # another writer changed a and added c (we never wrote either)
    await asyncio.sleep(0.06)
    version = cache.version(NS)
    waiter = asyncio.create_task(cache.wait_change(NS, version, within=5.0))
    await asyncio.sleep(0)
    assert await cache.get(NS) == {"a": a2, "c": c}
    assert cache.version(NS) == version + 1
    assert heard == [NS]
    await asyncio.wait_for(waiter, 1.0)  # a long poll waiting on the namespace wakes up

    read.data = configmap_data(c)  # and then removed a
    await asyncio.sleep(0.06)
    assert await cache.get(NS) == {"c": c}
    assert cache.version(NS) == version + 2
    assert heard == [NS, NS]


async def test_concurrent_misses_share_one_read(read: ConfigMapRead) -> None:
    a = bundle("a")
    read.data = configmap_data(a)
    read.blocking = True
    cache, _ = cache_with_listener()
    getters = [asyncio.create_task(cache.get(NS)) for _ in range(5)]
    await read.in_flight()
    read.release.set()
    assert await asyncio.gather(*getters) == [{"a": a}] * 5
    assert len(read.calls) == 1


async def test_a_put_of_an_unchanged_bundle_does_not_bump(read: ConfigMapRead) -> None:
    a = bundle("a")
    read.data = configmap_data(a)
    cache, heard = cache_with_listener()
    await cache.get(NS)
    cache.put(NS, a)
    assert (cache.version(NS), heard) == (0, [])
    cache.put(NS, bundle("a", 2))
    assert (cache.version(NS), heard) == (1, [NS])
