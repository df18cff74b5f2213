"""What the webhook decides, from bundles reconciled with a consistent read of the namespace's policies."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from breakwater.controller.admission import (
    EXPECT_SECONDS,
    Inject,
    PolicyView,
    SharedReads,
    Skip,
    consistent_bundles,
    decide,
    slim,
)
from breakwater.controller.pods import facts
from breakwater.controller.status import PodView, not_injected_message
from breakwater.injection.render import render_bundle


def policy(
    name: str = "payments",
    *,
    uid: str = "uid-1",
    generation: int = 1,
    timeout: str = "2s",
    listen_port: int = 15210,
    **meta: Any,
) -> dict[str, Any]:
    return {
        "apiVersion": "breakwater.dev/v1alpha1",
        "kind": "CircuitBreakerPolicy",
        "metadata": {
            "name": name,
            "namespace": "shop",
            "uid": uid,
            "generation": generation,
            "creationTimestamp": "2026-11-01T00:00:00Z",
            **meta,
        },
        "spec": {
            "selector": {"matchLabels": {"app": "checkout"}},
            "timeout": timeout,
            "upstreams": [{"name": name, "host": f"{name}.shop", "port": 8080, "listenPort": listen_port}],
        },
    }


def pod(*, labels: dict[str, str] | None = None, **spec: Any) -> dict[str, Any]:
    return {
        "metadata": {"name": "checkout-1", "labels": labels if labels is not None else {"app": "checkout"}},
        "spec": {"containers": [{"name": "app", "image": "app:1"}], **spec},
    }


def test_a_policy_the_cache_has_not_seen_yet_is_rendered_from_the_listed_object() -> None:
    bundles = consistent_bundles([policy()], {})
    assert bundles["payments"] == render_bundle(policy())


def test_a_cached_bundle_of_the_listed_generation_is_used_as_is() -> None:
    cached = render_bundle(policy()).model_copy(update={"upstreams": []})  # tell it from a fresh render
    assert consistent_bundles([policy()], {"payments": cached})["payments"] is cached


def test_an_edit_the_cache_has_not_seen_yet_wins_over_the_cached_generation() -> None:
    cached = render_bundle(policy(generation=1, timeout="2s"))
    bundles = consistent_bundles([policy(generation=2, timeout="750ms")], {"payments": cached})
    assert bundles["payments"].generation == 2
    assert bundles["payments"].upstreams[0].timeout_seconds == 0.75


def test_a_deleted_or_deleting_policy_is_dropped_although_the_cache_still_has_it() -> None:
    cached = {"payments": render_bundle(policy())}
    assert consistent_bundles([], cached) == {}
    deleting = policy(deletionTimestamp="2026-12-01T00:00:00Z")
    assert consistent_bundles([deleting], cached) == {}


def test_a_policy_recreated_under_the_same_name_is_not_the_cached_one() -> None:
    cached = {"payments": render_bundle(policy(uid="old", timeout="2s"))}
    bundles = consistent_bundles([policy(uid="new", timeout="1s")], cached)
    assert (bundles["payments"].uid, bundles["payments"].upstreams[0].timeout_seconds) == ("new", 1.0)


def test_an_edit_that_does_not_render_keeps_the_last_good_bundle_and_a_new_bad_policy_selects_nothing() -> (
    None
):
    good = render_bundle(policy(generation=1))
    broken = policy(generation=2)
    broken["spec"]["slowCalls"] = "not an object"  # passes no schema: render refuses it
    assert consistent_bundles([broken], {"payments": good}) == {"payments": good}
    assert consistent_bundles([broken], {}) == {}


def test_decide_injects_what_the_selecting_policies_resolve_to() -> None:
    bundles = [render_bundle(policy())]
    decision = decide(pod(), bundles, admin_port=15200, proxy_port=15201)
    assert isinstance(decision, Inject)
    assert decision.resolution.listen_ports == (("payments", 15210),)
    assert decide(pod(labels={"app": "cart"}), bundles, admin_port=15200, proxy_port=15201) is None


def test_decide_skips_a_selected_pod_that_cannot_carry_the_sidecar_with_the_reason() -> None:
    bundles = [render_bundle(policy())]
    host_network = decide(pod(hostNetwork=True), bundles, admin_port=15200, proxy_port=15201)
    assert isinstance(host_network, Skip)
    assert host_network.reason == "HostNetwork"
    clash = pod()
    clash["spec"]["containers"][0]["ports"] = [{"containerPort": 15210}]
    decision = decide(clash, bundles, admin_port=15200, proxy_port=15201)
    assert decision == Skip("ListenPortClash", "the app already declares port 15210 (listenPort of payments)")
    # An unselected hostNetwork pod is none of our business: no annotation, no warning.
    assert decide(pod(labels={}, hostNetwork=True), bundles, admin_port=15200, proxy_port=15201) is None


def selected_pod(name: str, *, injected: bool = False, not_injected: str = "") -> Any:
    annotations = {"breakwater.dev/injected": "true"} if injected else {}
    if not_injected:
        annotations["breakwater.dev/not-injected"] = not_injected
    found = facts(
        {"metadata": {"name": name, "uid": name, "labels": {"app": "checkout"}, "annotations": annotations}}
    )
    assert found is not None
    return found


def test_pods_not_injected_say_whether_a_restart_helps_or_what_must_change_first() -> None:
    pods = (
        selected_pod("ok", injected=True),
        selected_pod("early"),
        selected_pod("clash", not_injected="ListenPortClash: the app already declares port 15210"),
        selected_pod("host", not_injected="HostNetwork: hostNetwork pods share the node's ports"),
    )
    message = not_injected_message(PodView(pods, pods[:1], ()))
    assert message.startswith("3 of 4 selected pods run without the sidecar.")
    assert "1 (early) were created before the policy or while the webhook was unavailable: restart" in message
    # A namespace that never opted in looks the same from the pod: the hint says what to do then.
    assert "label it first, `kubectl label namespace NAMESPACE breakwater.dev/injection=enabled`" in message
    assert (
        "1 (clash) cannot carry it (ListenPortClash: the app already declares port 15210): change" in message
    )
    assert "1 (host) cannot carry it (HostNetwork" in message
    assert "opt it out" in message


# -- the view of policy names ---------------------------------------------------------------------


def listed(*names: str, namespace: str = "shop") -> dict[str, dict[str, dict[str, Any]]]:
    return {namespace: {n: slim(policy(n)) for n in names}}


def test_the_view_knows_every_listed_and_watched_name_and_forgets_deleted_ones() -> None:
    view = PolicyView()
    view.replace(None, listed("payments", "ledger"))
    view.apply([("shop", "stock", slim(policy("stock"))), ("shop", "ledger", None)])
    assert view.names("shop") == ["payments", "stock"]
    assert view.names("other") == []
    assert view.watched("shop", "payments") == slim(policy("payments"))


def test_a_name_seen_in_a_create_is_known_before_the_watch_delivers_it_and_expires_if_never_persisted() -> (
    None
):
    view = PolicyView()
    view.replace(None, {})
    view.expect("shop", "payments", now=100.0)
    assert view.names("shop", now=100.5) == ["payments"]
    assert view.names("shop", now=100.0 + EXPECT_SECONDS) == []  # refused after the webhook, or never sent
    view.expect("shop", "ledger", now=200.0)
    view.apply([("shop", "ledger", slim(policy("ledger")))])
    view.apply([("shop", "ledger", None)])  # persisted, then deleted: the expectation went with the event
    assert view.names("shop", now=200.5) == []


def test_a_create_without_a_name_makes_the_namespace_need_a_list_until_a_new_policy_arrives() -> None:
    view = PolicyView()
    view.replace(None, listed("payments"))
    view.expect("shop", "", now=100.0)
    assert view.names("shop", now=100.5) is None
    assert view.names("other", now=100.5) == []
    view.apply([("shop", "payments", slim(policy("payments", generation=2)))])  # an edit: not it
    assert view.names("shop", now=100.5) is None
    view.apply([("shop", "payments-x7k2q", slim(policy("payments-x7k2q")))])
    assert view.names("shop", now=100.5) == ["payments", "payments-x7k2q"]


def test_a_namespace_relist_replaces_only_that_namespace() -> None:
    view = PolicyView()
    view.replace(None, {**listed("payments"), **listed("ledger", namespace="bank")})
    view.replace("shop", {})
    assert (view.names("shop"), view.names("bank")) == ([], ["ledger"])
    assert len(view) == 1


def test_slim_keeps_what_a_decision_needs_and_drops_status_and_managed_fields() -> None:
    body = {**policy(), "status": {"pods": {}}}
    body["metadata"] = {**body["metadata"], "managedFields": [{"manager": "kubectl"}], "resourceVersion": "7"}
    kept = slim(body)
    assert "status" not in kept
    assert set(kept["metadata"]) == {"name", "namespace", "uid", "generation", "creationTimestamp"}
    assert render_bundle(kept) == render_bundle(policy())


# -- shared reads --------------------------------------------------------------------------------------


class Reads:
    """A read the test completes by hand."""

    def __init__(self) -> None:
        self.calls: list[asyncio.Future[int]] = []

    async def __call__(self, key: str) -> int:
        future: asyncio.Future[int] = asyncio.get_running_loop().create_future()
        self.calls.append(future)
        return await future


async def settle() -> None:
    for _ in range(5):
        await asyncio.sleep(0)


async def test_an_admission_never_joins_a_read_that_started_before_it_arrived() -> None:
    fetch = Reads()
    reads: SharedReads[str, int] = SharedReads(fetch)
    first = asyncio.ensure_future(reads.read("shop/payments"))
    await settle()
    later = [asyncio.ensure_future(reads.read("shop/payments")) for _ in range(3)]  # while it flies
    await settle()
    assert len(fetch.calls) == 1
    fetch.calls[0].set_result(1)
    await settle()
    assert await first == 1
    assert len(fetch.calls) == 2  # the queued read started once the first ended
    assert not any(t.done() for t in later)
    fetch.calls[1].set_result(2)
    assert await asyncio.gather(*later) == [2, 2, 2]
    assert reads.reads == 2


async def test_reads_of_other_keys_do_not_wait_for_each_other() -> None:
    fetch = Reads()
    reads: SharedReads[str, int] = SharedReads(fetch)
    a, b = asyncio.ensure_future(reads.read("a")), asyncio.ensure_future(reads.read("b"))
    await settle()
    assert len(fetch.calls) == 2
    fetch.calls[0].set_result(1)
    fetch.calls[1].set_result(2)
    assert (await a, await b) == (1, 2)


async def test_a_failed_read_fails_its_waiters_and_the_next_admission_reads_again() -> None:
    fetch = Reads()
    reads: SharedReads[str, int] = SharedReads(fetch)
    first = asyncio.ensure_future(reads.read("k"))
    await settle()
    fetch.calls[0].set_exception(ConnectionError("API server gone"))
    with pytest.raises(ConnectionError):
        await first
    again = asyncio.ensure_future(reads.read("k"))
    await settle()
    fetch.calls[1].set_result(3)
    assert await again == 3


async def test_an_admission_that_gives_up_does_not_cancel_the_read_others_wait_for() -> None:
    fetch = Reads()
    reads: SharedReads[str, int] = SharedReads(fetch)
    impatient = asyncio.ensure_future(asyncio.wait_for(reads.read("k"), 0.01))
    await settle()
    patient = asyncio.ensure_future(reads.read("k"))  # arrives while the first read flies
    with pytest.raises(TimeoutError):
        await impatient
    fetch.calls[0].set_result(1)
    await settle()
    fetch.calls[1].set_result(4)
    assert await patient == 4
