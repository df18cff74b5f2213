"""The pod index: facts from pod metadata alone, the index's bookkeeping, and ListWatch on a scripted API."""

from __future__ import annotations

import asyncio
import json
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from breakwater.api.constants import (
    ANNOTATION_CONFIG_HASH,
    ANNOTATION_INJECT,
    ANNOTATION_INJECTED,
    ANNOTATION_POLICIES,
    SIDECAR_NAME,
)
from breakwater.controller.pods import PodFacts, PodIndex, facts
from breakwater.k8s import listwatch
from breakwater.k8s.listwatch import FIELD_SELECTOR, LIST_ACCEPT, WATCH_ACCEPT, ListWatch


def meta(
    name: str,
    *,
    namespace: str = "shop",
    labels: dict[str, str] | None = None,
    annotations: dict[str, str] | None = None,
    rv: str = "1",
    **extra: Any,
) -> dict[str, Any]:
    """A PartialObjectMetadata body, as the metadata-only watch receives it."""
    return {
        "kind": "PartialObjectMetadata",
        "apiVersion": "meta.k8s.io/v1",
        "metadata": {
            "name": name,
            "namespace": namespace,
            "uid": f"uid-{name}",
            "resourceVersion": rv,
            "labels": labels if labels is not None else {"app": "checkout"},
            "annotations": annotations or {},
            **extra,
        },
    }


INJECTED = {
    ANNOTATION_INJECTED: "true",
    ANNOTATION_POLICIES: "shop/payments,shop/search",
    ANNOTATION_CONFIG_HASH: "abc123",
}


# -- facts ----------------------------------------------------------------------------------------


def test_facts_from_metadata_only() -> None:
    found = facts(meta("web-1", labels={"tier": "web", "app": "checkout"}, annotations=INJECTED))
    assert found == PodFacts(
        name="web-1",
        uid="uid-web-1",
        labels=(("app", "checkout"), ("tier", "web")),
        injected=True,
        config_hash="abc123",
        policies=("shop/payments", "shop/search"),
    )
    plain = facts(meta("web-2"))
    assert plain is not None
    assert (plain.injected, plain.config_hash, plain.policies, plain.opted_out) == (False, "", (), False)


def test_injected_is_the_annotation_the_webhook_sets() -> None:
    assert facts(meta("a", annotations={ANNOTATION_INJECTED: "true"})).injected  # type: ignore[union-attr]
    assert not facts(meta("b", annotations={ANNOTATION_INJECTED: "false"})).injected  # type: ignore[union-attr]


def test_opted_out_and_deleting_pods() -> None:
    opted = facts(meta("a", annotations={ANNOTATION_INJECT: "False"}))
    assert opted is not None
    assert opted.opted_out
    assert facts(meta("b", deletionTimestamp="2024-01-01T00:00:00Z")) is None
    assert facts({}) == PodFacts(name="", uid="", labels=(), injected=False, config_hash="", policies=())


def test_full_pod_bodies_still_work() -> None:
    body = {
        **meta("web-1", annotations=INJECTED),
        "spec": {"containers": [{"name": SIDECAR_NAME}, {"name": "app"}]},
        "status": {"phase": "Running", "podIP": "127.64.0.1"},
    }
    found = facts(body)
    assert found is not None
    assert found.injected
    assert facts({**body, "status": {"phase": "Succeeded"}}) is None
    assert facts({**body, "status": {"phase": "Failed"}}) is None


def test_facts_are_small_and_share_repeated_strings_and_tuples() -> None:
    one = facts(meta("a", labels={"app": "checkout", "tier": "web"}, annotations=INJECTED))
    two = facts(meta("b", labels={"tier": "web", "app": "checkout"}, annotations=dict(INJECTED)))
    assert one is not None
    assert two is not None
    assert not hasattr(one, "__dict__")  # slots
    assert not hasattr(one, "ip")
    assert one.labels is two.labels
    assert one.policies is two.policies
    assert one.config_hash is two.config_hash
    assert one.label_map == {"app": "checkout", "tier": "web"}
    with pytest.raises(AttributeError):
        one.name = "c"  # type: ignore[misc]


# -- the index ------------------------------------------------------------------------------------


def pod(name: str, *, app: str = "checkout", injected: bool = False) -> PodFacts:
    found = facts(meta(name, labels={"app": app}, annotations=INJECTED if injected else {}))
    assert found is not None
    return found


def recording(index: PodIndex) -> list[str]:
    calls: list[str] = []
    index.listeners.append(calls.append)
    return calls


def test_add_modify_remove_and_listeners_only_on_real_changes() -> None:
    index = PodIndex()
    calls = recording(index)
    index.apply([("shop", "a", pod("a")), ("shop", "b", pod("b")), ("dev", "c", pod("c"))])
    assert sorted(calls) == ["dev", "shop"]  # one call per namespace per batch
    assert index.get("shop", "a") == pod("a")
    assert index.get("shop", "zzz") is None
    assert index.get("nowhere", "a") is None
    assert sorted(p.name for p in index.in_namespace("shop")) == ["a", "b"]
    assert set(index.namespaces()) == {"shop", "dev"}
    assert len(index) == 3

    calls.clear()
    index.apply([("shop", "a", pod("a")), ("dev", "gone", None)])  # same facts; an unknown pod removed
    assert calls == []

    index.apply([("shop", "a", pod("a", app="search"))])  # labels changed
    assert calls == ["shop"]
    assert index.get("shop", "a") == pod("a", app="search")

    calls.clear()
    index.apply([("shop", "b", pod("b", injected=True))])
    assert calls == ["shop"]

    calls.clear()
    index.apply([("dev", "c", None)])
    assert calls == ["dev"]
    assert "dev" not in index.namespaces()  # an empty namespace is forgotten
    assert list(index.in_namespace("dev")) == []


def test_in_namespace_is_a_live_view_not_a_copy() -> None:
    index = PodIndex()
    index.apply([("shop", "a", pod("a"))])
    view = index.in_namespace("shop")
    index.apply([("shop", "b", pod("b"))])
    assert len(view) == 2


def test_a_cluster_wide_relist_replaces_everything() -> None:
    index = PodIndex()
    index.apply(
        [("shop", "a", pod("a")), ("shop", "b", pod("b")), ("dev", "c", pod("c")), ("ops", "d", pod("d"))]
    )
    calls = recording(index)
    index.replace(
        None, {"shop": {"a": pod("a"), "b": pod("b", app="search")}, "ops": {"d": pod("d")}, "qa": {}}
    )
    assert sorted(calls) == ["dev", "shop"]  # ops unchanged; qa empty both before and after
    assert index.get("shop", "b") == pod("b", app="search")
    assert index.get("dev", "c") is None
    assert set(index.namespaces()) == {"shop", "ops"}


def test_a_namespace_relist_replaces_only_that_namespace() -> None:
    index = PodIndex()
    index.apply([("shop", "a", pod("a")), ("dev", "c", pod("c"))])
    calls = recording(index)
    index.replace("shop", {"shop": {"a": pod("a")}})
    assert calls == []
    index.replace("shop", {"shop": {"x": pod("x")}})
    assert calls == ["shop"]
    assert [p.name for p in index.in_namespace("shop")] == ["x"]
    assert index.get("dev", "c") is not None
    index.replace("shop", {})
    assert set(index.namespaces()) == {"dev"}


def test_a_failing_listener_does_not_stop_the_others(caplog: pytest.LogCaptureFixture) -> None:
    index = PodIndex()

    def broken(namespace: str) -> None:
        raise RuntimeError("boom")

    index.listeners.append(broken)
    calls = recording(index)
    index.apply([("shop", "a", pod("a"))])
    assert calls == ["shop"]
    assert "listener failed" in caplog.text
    assert index.get("shop", "a") is not None


# -- ListWatch against a scripted API server --------------------------------------------------------


class FakeResponse:
    def __init__(
        self, status: int = 200, body: Any = None, events: list[dict[str, Any]] | None = None
    ) -> None:
        self.status = status
        self.data = json.dumps(body).encode() if body is not None else b""
        self.events = events
        self.gate: threading.Event | None = None  # a watch that stays open until shut down
        self.closed = threading.Event()

    def read(self) -> bytes:
        return self.data

    def chunks(self) -> Iterator[bytes]:
        for event in self.events or ():
            line = json.dumps(event).encode() + b"\n"
            yield line[:10]  # a line split across chunks
            yield line[10:]
        if self.gate is not None:
            self.closed.wait(10)

    def shutdown(self) -> None:
        self.closed.set()

    def close(self) -> None:
        self.closed.set()


class FakeApi:
    """Enough of breakwater.k8s.transport.ApiClient for ListWatch: headers and streaming GETs."""

    def __init__(self, script: Callable[[str, dict[str, str]], FakeResponse]) -> None:
        self.script = script
        self.requests: list[tuple[str, dict[str, str], dict[str, str]]] = []

    def headers(self, accept: str = "application/json") -> dict[str, str]:
        return {"User-Agent": "test", "Accept": accept, "Authorization": "Bearer token"}

    def open_stream(
        self, path: str, params: dict[str, str], headers: dict[str, str], **_: Any
    ) -> FakeResponse:
        self.requests.append((path, dict(params), dict(headers)))
        return self.script(path, dict(params))


def pod_list(items: list[dict[str, Any]], *, rv: str, token: str = "") -> dict[str, Any]:
    return {
        "kind": "PartialObjectMetadataList",
        "metadata": {"resourceVersion": rv, **({"continue": token} if token else {})},
        "items": items,
    }


async def eventually(check: Callable[[], bool]) -> None:
    for _ in range(500):
        if check():
            return
        await asyncio.sleep(0.01)
    raise AssertionError("timed out after 5 s")


async def test_pod_watch_lists_in_pages_watches_and_relists_on_410() -> None:
    second_watch = threading.Event()
    responses: dict[str, FakeResponse] = {}

    def script(path: str, query: dict[str, str]) -> FakeResponse:
        if "watch" not in query:
            if query.get("continue") == "page2":
                return FakeResponse(body=pod_list([meta("c", namespace="dev")], rv="10"))
            if not responses.get("listed"):
                responses["listed"] = FakeResponse()
                return FakeResponse(body=pod_list([meta("a"), meta("b")], rv="10", token="page2"))
            # the relist after the 410: b, c and d are gone
            return FakeResponse(body=pod_list([meta("a", labels={"app": "search"}), meta("e")], rv="40"))
        rv = query["resourceVersion"]
        if rv == "10":
            return FakeResponse(
                events=[
                    {"type": "ADDED", "object": meta("d", rv="11")},
                    {"type": "MODIFIED", "object": meta("a", labels={"app": "search"}, rv="12")},
                    {"type": "MODIFIED", "object": meta("a", labels={"app": "search"}, rv="13")},
                    {
                        "type": "BOOKMARK",
                        "object": {"kind": "PartialObjectMetadata", "metadata": {"resourceVersion": "20"}},
                    },
                    {"type": "DELETED", "object": meta("b", rv="21")},
                    {
                        "type": "MODIFIED",
                        "object": meta("c", namespace="dev", rv="22", deletionTimestamp="x"),
                    },
                ]
            )  # then the server ends the watch: watch again from 22
        if rv == "22":
            assert second_watch.wait(5)
            return FakeResponse(events=[{"type": "ERROR", "object": {"kind": "Status", "code": 410}}])
        assert rv == "40"
        blocking = FakeResponse()
        blocking.gate = threading.Event()
        responses["blocking"] = blocking
        return blocking

    api = FakeApi(script)
    index = PodIndex()
    calls = recording(index)
    watch = ListWatch(api, index, facts)
    watch.start(asyncio.get_running_loop())
    try:
        await asyncio.wait_for(index.synced.wait(), 5)
        await eventually(lambda: "dev" not in index.namespaces() and index.get("shop", "b") is None)
        assert sorted(p.name for p in index.in_namespace("shop")) == ["a", "d"]
        assert index.get("shop", "a") == pod("a", app="search")
        assert watch.pages_listed == 2

        second_watch.set()
        await eventually(lambda: "blocking" in responses and index.get("shop", "e") is not None)
        await eventually(lambda: index.get("shop", "d") is None)
        assert sorted(p.name for p in index.in_namespace("shop")) == ["a", "e"]
        assert watch.lists == 2
    finally:
        started = time.monotonic()
        watch.stop()
        assert time.monotonic() - started < 2
    assert all(not t.is_alive() for t in watch._threads)

    lists = [q for path, q, h in api.requests if "watch" not in q]
    watches = [q for path, q, h in api.requests if "watch" in q]
    assert all(path == "/api/v1/pods" for path, _, _ in api.requests)
    assert all(q["fieldSelector"] == FIELD_SELECTOR and q["limit"] == "500" for q in lists)
    assert [q.get("continue") for q in lists] == [None, "page2", None]
    assert [q["resourceVersion"] for q in watches] == ["10", "22", "40"]
    assert all(q["allowWatchBookmarks"] == "true" and q["timeoutSeconds"] == "300" for q in watches)
    assert all(q["fieldSelector"] == FIELD_SELECTOR for q in watches)
    for _, q, headers in api.requests:
        assert headers["Accept"] == (WATCH_ACCEPT if "watch" in q else LIST_ACCEPT)
        assert headers["Authorization"] == "Bearer token"
    # the second MODIFIED of a (same facts) notified nobody: every call is a real change
    assert calls.count("dev") == 2  # listed, then its only pod being deleted


async def test_pod_watch_backs_off_and_relists_after_errors(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setattr(listwatch, "BACKOFF_MIN", 0.01)
    attempts: list[str] = []

    def script(path: str, query: dict[str, str]) -> FakeResponse:
        attempts.append(path)
        if len(attempts) < 3:
            return FakeResponse(status=500, body={"message": "etcd is sad"})
        if "watch" not in query:
            return FakeResponse(body=pod_list([meta("a", namespace=path.split("/")[4])], rv="5"))
        blocking = FakeResponse()
        blocking.gate = threading.Event()
        return blocking

    api = FakeApi(script)
    index = PodIndex()
    watch = ListWatch(api, index, facts, namespaces=("shop", "dev"))
    watch.start(asyncio.get_running_loop())
    try:
        await asyncio.wait_for(index.synced.wait(), 5)
        assert set(index.namespaces()) == {"shop", "dev"}
        assert "HTTP 500" in caplog.text
        assert "relisting in" in caplog.text
    finally:
        watch.stop()
    assert {p for p in attempts} == {"/api/v1/namespaces/shop/pods", "/api/v1/namespaces/dev/pods"}
    assert all(not t.is_alive() for t in watch._threads)
