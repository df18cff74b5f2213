"""A lean list-and-watch of one resource, in one thread, handing batches to the event loop.

Used for pods (`PODS`), policies (`POLICIES`) and the operator's ConfigMaps (`BUNDLES`). kopf's pod
index receives every full pod body (spec, status, managedFields), which at 10,000 pods costs far more
memory than the few facts the operator keeps: for pods this watch asks the API server for
PartialObjectMetadata only, leaves finished pods out by field selector, lists in pages and converts
each pod in its own thread (`convert`, e.g. `controller.pods.facts`); the event loop only receives the
converted results, in batches, through a `Sink` (e.g. `controller.pods.PodIndex`). For policies it
delivers each change within milliseconds, without kopf's batching window, to the webhook's view
(`controller.admission.PolicyView`); for ConfigMaps, to every replica's `controller.state.BundleCache`.

One thread per scope: the whole cluster, or each watched namespace (the API has no multi-namespace
watch). Each thread lists, then watches from the list's resourceVersion; a 410 (expired) relists at
once, any other error relists after a backoff of 1 s doubling to 30 s. A relist replaces the scope's
objects atomically.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import sys
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Generic, Protocol, TypeVar
from urllib.parse import quote

from breakwater.api.constants import CONFIGMAP_NAME, GROUP, PLURAL, VERSION
from breakwater.errors import KubernetesError
from breakwater.k8s.transport import ApiClient, StreamResponse

logger = logging.getLogger(__name__)

T = TypeVar("T")

FIELD_SELECTOR = "status.phase!=Succeeded,status.phase!=Failed"
LIST_ACCEPT = "application/json;as=PartialObjectMetadataList;g=meta.k8s.io;v=v1"
WATCH_ACCEPT = "application/json;as=PartialObjectMetadata;g=meta.k8s.io;v=v1"


@dataclass(frozen=True)
class WatchedResource:
    """What to list and watch, and how to ask for it."""

    kind: str  # for logs and thread names, e.g. "pod"
    prefix: str  # "/api/v1" or "/apis/GROUP/VERSION"
    plural: str
    field_selector: str = ""
    list_accept: str = "application/json"
    watch_accept: str = "application/json"

    def path(self, namespace: str | None) -> str:
        if namespace:
            return f"{self.prefix}/namespaces/{quote(namespace, safe='')}/{self.plural}"
        return f"{self.prefix}/{self.plural}"


PODS = WatchedResource("pod", "/api/v1", "pods", FIELD_SELECTOR, LIST_ACCEPT, WATCH_ACCEPT)
POLICIES = WatchedResource("policy", f"/apis/{GROUP}/{VERSION}", PLURAL)
# Only the operator's own ConfigMap of each namespace (RBAC can then name it in resourceNames).
BUNDLES = WatchedResource("configmap", "/api/v1", "configmaps", f"metadata.name={CONFIGMAP_NAME}")
BACKOFF_MIN = 1.0
BACKOFF_MAX = 30.0
HEALTHY_AFTER = 60.0  # a watch that ran this long since its list resets the backoff


class Sink(Protocol[T]):
    """Where the watch delivers, always on the event loop's thread and in the order things happened."""

    def replace(self, scope: str | None, items: dict[str, dict[str, T]]) -> None:
        """A complete list: `items` (namespace -> name -> item) is everything in `scope` (None: all)."""

    def apply(self, changes: Sequence[tuple[str, str, T | None]]) -> None:
        """Watch events: (namespace, name, item), item None for an object gone or no longer counted."""

    def mark_synced(self) -> None:
        """Every scope has been listed once."""


class WatchError(KubernetesError):
    """The API server answered with an error (other than 410 Gone)."""


class _Expired(Exception):
    """410 Gone: the resourceVersion (or the continue token) is too old; list again."""


class _Stopped(Exception):
    pass


@dataclass(slots=True)
class _Listed(Generic[T]):
    scope: str | None
    items: dict[str, dict[str, T]]
    count: int
    pages: int
    seconds: float


class ListWatch(Generic[T]):
    """Keeps a `Sink` current with the objects of `resource` in the cluster (or in `namespaces`).

    `start(loop)` from the loop's thread; `stop()` (blocking, a few seconds at most) at shutdown.
    """

    def __init__(
        self,
        api: ApiClient,
        sink: Sink[T],
        convert: Callable[[Mapping[str, Any]], T | None],
        *,
        resource: WatchedResource = PODS,
        namespaces: Sequence[str] = (),
        page_size: int = 500,
        watch_timeout: int = 300,
        connect_timeout: float = 10.0,
        list_timeout: float = 60.0,
    ) -> None:
        self._api = api
        self.resource = resource
        self._sink = sink
        self._convert = convert
        self._scopes: tuple[str | None, ...] = tuple(dict.fromkeys(namespaces)) or (None,)
        self.page_size = page_size
        self.watch_timeout = watch_timeout
        self.connect_timeout = connect_timeout
        self.list_timeout = list_timeout
        self.pages_listed = 0  # LIST pages fetched, over every list and relist
        self.lists = 0  # complete lists, the first ones included
        self._loop: asyncio.AbstractEventLoop | None = None
        self._threads: list[threading.Thread] = []
        self._stopping = threading.Event()
        self._lock = threading.Lock()
        self._queue: list[_Listed[T] | tuple[str, str, T | None]] = []
        self._scheduled = False
        self._responses: set[StreamResponse] = set()
        self._unsynced: set[str | None] = set()
        self._started_at = 0.0
        self._first_count = 0
        self._first_namespaces: set[str] = set()

    # -- control (the loop's thread) ----------------------------------------------------------------

    def start(self, loop: asyncio.AbstractEventLoop) -> None:
        if self._threads:
            raise RuntimeError("ListWatch already started")
        self._loop = loop
        self._started_at = time.monotonic()
        self._unsynced = set(self._scopes)
        for scope in self._scopes:
            name = f"breakwater-{self.resource.kind}-watch" + (f"-{scope}" if scope else "")
            thread = threading.Thread(target=self._run, args=(scope,), name=name, daemon=True)
            self._threads.append(thread)
            thread.start()

    def stop(self, timeout: float = 5.0) -> None:
        """Stop the threads: open requests are shut down, so this takes well under `timeout`."""
        self._stopping.set()
        with self._lock:
            responses = list(self._responses)
        for response in responses:
            response.shutdown()
        deadline = time.monotonic() + timeout
        for thread in self._threads:
            thread.join(max(0.0, deadline - time.monotonic()))
        alive = [t.name for t in self._threads if t.is_alive()]
        if alive:
            logger.warning(
                "%s watch threads still running after %.0f s: %s",
                self.resource.kind,
                timeout,
                ", ".join(alive),
            )

    # -- the loop's side ----------------------------------------------------------------------------

    def _drain(self) -> None:
        with self._lock:
            items, self._queue, self._scheduled = self._queue, [], False
        changes: list[tuple[str, str, T | None]] = []
        for item in items:
            if isinstance(item, _Listed):
                if changes:
                    self._sink.apply(changes)
                    changes = []
                self._sink.replace(item.scope, item.items)
                self._listed(item)
            else:
                changes.append(item)
        if changes:
            self._sink.apply(changes)

    def _listed(self, listed: _Listed[T]) -> None:
        where = _where(listed.scope)
        if listed.scope not in self._unsynced:
            logger.info(
                "%s watch: relisted %d objects%s in %.1f s (%d pages)",
                self.resource.kind,
                listed.count,
                where,
                listed.seconds,
                listed.pages,
            )
            return
        self._unsynced.discard(listed.scope)
        self._first_count += listed.count
        self._first_namespaces.update(ns for ns, found in listed.items.items() if found)
        if not self._unsynced:
            logger.info(
                "%s watch: %d objects in %d namespaces listed in %.1f s",
                self.resource.kind,
                self._first_count,
                len(self._first_namespaces),
                time.monotonic() - self._started_at,
            )
            self._sink.mark_synced()

    # -- the thread's side --------------------------------------------------------------------------

    def _enqueue(self, items: Sequence[_Listed[T] | tuple[str, str, T | None]]) -> None:
        assert self._loop is not None
        with self._lock:
            self._queue.extend(items)
            if self._scheduled:
                return
            self._scheduled = True
        try:
            self._loop.call_soon_threadsafe(self._drain)
        except RuntimeError as exc:  # the loop is closed: nobody is listening any more
            self._stopping.set()
            raise _Stopped from exc

    def _run(self, scope: str | None) -> None:
        where = _where(scope)
        resource_version: str | None = None
        delay = BACKOFF_MIN
        healthy_since: float | None = None
        while not self._stopping.is_set():
            try:
                if resource_version is None:
                    resource_version = self._list(scope)
                    healthy_since = time.monotonic()
                resource_version = self._watch(scope, resource_version)
            except _Stopped:
                break
            except _Expired:
                if self._stopping.is_set():
                    break
                logger.info(
                    "%s watch%s: resourceVersion %s expired; relisting",
                    self.resource.kind,
                    where,
                    resource_version,
                )
                resource_version = None
            except Exception as exc:
                if self._stopping.is_set():
                    break
                if healthy_since is not None and time.monotonic() - healthy_since > HEALTHY_AFTER:
                    delay = BACKOFF_MIN
                healthy_since = None
                resource_version = None
                logger.warning(
                    "%s watch%s failed (%s: %s); relisting in %.0f s",
                    self.resource.kind,
                    where,
                    type(exc).__name__,
                    exc,
                    delay,
                )
                if self._stopping.wait(delay):
                    break
                delay = min(delay * 2, BACKOFF_MAX)

    def _list(self, scope: str | None) -> str:
        started = time.monotonic()
        items: dict[str, dict[str, T]] = {}
        count = pages = 0
        token = ""
        while True:
            params = {"limit": str(self.page_size)}
            if self.resource.field_selector:
                params["fieldSelector"] = self.resource.field_selector
            if token:
                params["continue"] = token
            path = self.resource.path(scope)
            with self._request(path, params, self.resource.list_accept, self.list_timeout) as response:
                body = json.loads(response.read())
            pages += 1
            with self._lock:
                self.pages_listed += 1
            for item in body.get("items") or ():
                found = self._convert(item)
                if found is None:
                    continue
                meta = item.get("metadata") or {}
                namespace = sys.intern(str(meta.get("namespace", "")))
                by_name = items.get(namespace)
                if by_name is None:
                    by_name = items[namespace] = {}
                by_name[str(meta.get("name", ""))] = found
                count += 1
            list_meta = body.get("metadata") or {}
            token = str(list_meta.get("continue") or "")
            del body
            if not token:
                break
        with self._lock:
            self.lists += 1
        self._enqueue([_Listed(scope, items, count, pages, time.monotonic() - started)])
        return str(list_meta.get("resourceVersion") or "")

    def _watch(self, scope: str | None, resource_version: str) -> str:
        params = {
            "watch": "1",
            "allowWatchBookmarks": "true",
            "timeoutSeconds": str(self.watch_timeout),
            "resourceVersion": resource_version,
        }
        if self.resource.field_selector:
            params["fieldSelector"] = self.resource.field_selector
        read_timeout = self.watch_timeout + 30.0  # the server ends the watch first; bookmarks keep it alive
        path = self.resource.path(scope)
        with self._request(path, params, self.resource.watch_accept, read_timeout) as response:
            rest = b""
            for chunk in response.chunks():
                if b"\n" not in chunk:
                    rest += chunk
                    continue
                lines = (rest + chunk).split(b"\n")
                rest = lines.pop()
                changes: list[tuple[str, str, T | None]] = []
                for line in lines:
                    if line.strip():
                        resource_version = self._event(json.loads(line), changes, resource_version)
                if changes:
                    self._enqueue(changes)
        if self._stopping.is_set():
            raise _Stopped
        return resource_version

    def _event(
        self, event: Mapping[str, Any], changes: list[tuple[str, str, T | None]], resource_version: str
    ) -> str:
        kind = event.get("type")
        obj = event.get("object") or {}
        if kind == "ERROR":
            if obj.get("code") == 410:
                raise _Expired
            raise WatchError(
                int(obj.get("code") or 0), f"watch error {obj.get('reason')}: {obj.get('message')}"
            )
        meta = obj.get("metadata") or {}
        if kind in ("ADDED", "MODIFIED", "DELETED"):
            namespace = sys.intern(str(meta.get("namespace", "")))
            found = self._convert(obj) if kind != "DELETED" else None
            changes.append((namespace, str(meta.get("name", "")), found))
        # BOOKMARK (and anything unknown): only its resourceVersion matters
        return str(meta.get("resourceVersion") or resource_version)

    @contextlib.contextmanager
    def _request(
        self, path: str, params: Mapping[str, str], accept: str, read_timeout: float
    ) -> Iterator[StreamResponse]:
        """A streaming GET with the client's TLS and credentials; shut down by `stop()` if it comes."""
        api = self._api
        response = api.open_stream(
            path,
            params,
            api.headers(accept),
            connect_timeout=self.connect_timeout,
            read_timeout=read_timeout,
        )
        with self._lock:
            self._responses.add(response)
        try:
            if self._stopping.is_set():
                raise _Stopped
            if response.status != 200:
                detail = response.read()[:300].decode(errors="replace")
                if response.status == 410:
                    raise _Expired
                raise WatchError(response.status, f"GET {path}: HTTP {response.status}: {detail}")
            yield response
        finally:
            with self._lock:
                self._responses.discard(response)
            response.close()


def _where(scope: str | None) -> str:
    return f" in namespace {scope}" if scope else ""
