"""What the webhook decides for a pod, from policies read consistently with the API server.

The operator's bundle cache lags the API: a policy applied in the same `kubectl apply` as a Deployment
reaches it only once kopf has reconciled it (kopf alone waits 0.1 s to batch a watch event), and a
webhook answering from that cache lets the first pods start unprotected. A consistent LIST per
admission would fix it but costs tens of milliseconds under load: the API server answers it from its
watch cache only after asking etcd for progress, which it does every 100 ms (docs/design.md has the
measurements). A GET without a resourceVersion, by contrast, is read from etcd directly, in a
millisecond or two. So the webhook keeps its own view of every policy name per namespace and GETs
each one at every admission:

- `PolicyView` is fed by an unbatched list-and-watch of the policies (`k8s.listwatch`), and learns
  the name of a policy being created before it is persisted, from the API server itself: the same
  webhook configuration sends policy CREATEs to the operator (`expect`, which never changes or
  refuses the policy). So every name the API server holds is known when a pod is admitted after it;
- `consistent_bundles` turns the GETs' answers into bundles: the cached bundle where it is of the
  read uid and generation, else one rendered from the read object; a policy no longer there (404) or
  being deleted is dropped.

Until the view has listed the policies once (just after start-up), admissions read a consistent LIST.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable, Coroutine, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Generic, Protocol, TypeVar

from breakwater.api import constants
from breakwater.api.bundle import PolicyBundle
from breakwater.injection import pod as injection
from breakwater.injection.mesh import in_mesh_range, mesh_of
from breakwater.injection.render import RenderError, render_bundle
from breakwater.injection.resolve import Resolution, chosen_ports, resolve

logger = logging.getLogger(__name__)

Policies = list[dict[str, Any]]  # CircuitBreakerPolicy objects as the API server returns them
EXPECT_SECONDS = 30.0  # how long a name seen in a CREATE is kept without the watch confirming it


def consistent_bundles(
    listed: Iterable[Mapping[str, Any]],
    cached: Mapping[str, PolicyBundle],
    *,
    render: Callable[[Mapping[str, Any]], PolicyBundle] = render_bundle,
) -> dict[str, PolicyBundle]:
    """The bundles of exactly the listed policies: the cached bundle where it is of the listed uid and
    generation, else one rendered from the listed object. A listed policy that does not render keeps
    its last good bundle (as the reconcile does) or, never rendered, selects nothing."""
    bundles: dict[str, PolicyBundle] = {}
    for body in listed:
        meta = body.get("metadata") or {}
        if meta.get("deletionTimestamp"):
            continue  # being deleted: its finalizer runs next, and the pod must not carry it
        name, uid = str(meta.get("name", "")), str(meta.get("uid", ""))
        generation = int(meta.get("generation") or 0)
        known = cached.get(name)
        if known is not None and known.uid == uid and known.generation == generation:
            bundles[name] = known
            continue
        try:
            bundles[name] = render(body)
        except RenderError:
            if known is not None and known.uid == uid:
                bundles[name] = known
    return bundles


def slim(body: Mapping[str, Any]) -> dict[str, Any]:
    """What the view keeps of a policy: identity, generation, deletion and spec (no status, no
    managedFields): enough to decide an admission when a GET fails."""
    meta = body.get("metadata") or {}
    keep = ("name", "namespace", "uid", "generation", "creationTimestamp", "deletionTimestamp")
    return {
        "apiVersion": body.get("apiVersion"),
        "kind": body.get("kind"),
        "metadata": {k: meta[k] for k in keep if k in meta},
        "spec": body.get("spec") or {},
    }


@dataclass
class PolicyView:
    """Every policy of the watched namespaces, by namespace and name: a `listwatch.Sink`, plus the
    names of policies being created (from the webhook) that the watch has not delivered yet."""

    _known: dict[str, dict[str, dict[str, Any]]] = field(default_factory=dict)
    _expected: dict[str, dict[str, float]] = field(default_factory=dict)  # ns -> name -> until
    _unnamed: dict[str, float] = field(default_factory=dict)  # ns -> until: a generateName CREATE
    synced: asyncio.Event = field(default_factory=asyncio.Event)

    # -- the watch's side (on the event loop) ----------------------------------------------------

    def replace(self, scope: str | None, items: dict[str, dict[str, dict[str, Any]]]) -> None:
        if scope is None:
            self._known = {ns: dict(by_name) for ns, by_name in items.items() if by_name}
        elif items.get(scope):
            self._known[scope] = dict(items[scope])
        else:
            self._known.pop(scope, None)
        for namespace, by_name in items.items():
            for name in by_name:
                self._confirm(namespace, name)

    def apply(self, changes: Sequence[tuple[str, str, dict[str, Any] | None]]) -> None:
        for namespace, name, body in changes:
            if body is None:
                found = self._known.get(namespace)
                if found is not None:
                    found.pop(name, None)
                    if not found:
                        del self._known[namespace]
            else:
                by_name = self._known.setdefault(namespace, {})
                if name not in by_name:
                    self._unnamed.pop(namespace, None)  # most likely the generated name we waited for
                by_name[name] = body
                self._confirm(namespace, name)

    def mark_synced(self) -> None:
        self.synced.set()

    def _confirm(self, namespace: str, name: str) -> None:
        expected = self._expected.get(namespace)
        if expected is not None and expected.pop(name, None) is not None and not expected:
            del self._expected[namespace]

    # -- the webhook's side ----------------------------------------------------------------------

    def expect(self, namespace: str, name: str, *, now: float | None = None) -> None:
        """A CREATE of this policy is being admitted: it may be persisted any moment now. Without a
        name (generateName: the API server picks it after this webhook) the namespace is read with a
        LIST until the watch delivers the new policy."""
        until = (time.monotonic() if now is None else now) + EXPECT_SECONDS
        if name:
            self._expected.setdefault(namespace, {})[name] = until
        else:
            self._unnamed[namespace] = until

    def names(self, namespace: str, *, now: float | None = None) -> list[str] | None:
        """Every policy name the API server may hold in `namespace` (watched, or expected), or None
        when a policy of unknown name may be (then only a LIST can tell)."""
        now = time.monotonic() if now is None else now
        if self._unnamed.get(namespace, 0.0) > now:
            return None
        self._unnamed.pop(namespace, None)
        expected = self._expected.get(namespace) or {}
        for name in [n for n, until in expected.items() if until <= now]:
            del expected[name]  # never persisted (refused by a later admission step)
        return sorted({*self._known.get(namespace, {}), *expected})

    def watched(self, namespace: str, name: str) -> dict[str, Any] | None:
        return self._known.get(namespace, {}).get(name)

    def __len__(self) -> int:
        return sum(len(by_name) for by_name in self._known.values())


class PolicyReader(Protocol):
    async def get_policy(self, namespace: str, name: str) -> dict[str, Any] | None: ...
    async def list_policies(self, namespace: str) -> list[dict[str, Any]]: ...


K = TypeVar("K")
V = TypeVar("V")


class SharedReads(Generic[K, V]):
    """Reads shared by concurrent admissions, without giving up consistency.

    A read is only shared with callers that arrived before it started: one that arrives while a read
    of the same key is in flight waits for the next read (which starts when the current one ends and
    serves every caller queued meanwhile). So each caller gets an answer read after it arrived, and a
    key costs at most two reads in flight, however many pods are being admitted at once.
    """

    def __init__(self, fetch: Callable[[K], Coroutine[Any, Any, V]]) -> None:
        self._fetch = fetch
        self._in_flight: dict[K, asyncio.Task[V]] = {}
        self._queued: dict[K, asyncio.Task[V]] = {}
        self.reads = 0  # reads sent, for tests and benchmarks

    async def read(self, key: K) -> V:
        current = self._in_flight.get(key)
        if current is None:
            return await asyncio.shield(self._start(key))
        queued = self._queued.get(key)
        if queued is None:
            queued = asyncio.get_running_loop().create_task(self._after(current, key))
            self._queued[key] = queued
        return await asyncio.shield(queued)

    def _start(self, key: K) -> asyncio.Task[V]:
        self.reads += 1
        task = asyncio.get_running_loop().create_task(self._fetch(key))
        self._in_flight[key] = task
        task.add_done_callback(lambda done: self._finished(key, done))
        return task

    def _finished(self, key: K, task: asyncio.Task[V]) -> None:
        if self._in_flight.get(key) is task:
            del self._in_flight[key]
        if not task.cancelled():
            task.exception()  # retrieved here: every waiter may have given up (the webhook's deadline)

    async def _after(self, current: asyncio.Task[V], key: K) -> V:
        await asyncio.wait([current])
        del self._queued[key]  # callers arriving from now on queue behind this read, not join it
        return await self._start(key)


class ConsistentReads:
    """The reads `read_policies` makes, shared between concurrent admissions (`SharedReads`)."""

    def __init__(self, api: PolicyReader) -> None:
        self.gets: SharedReads[tuple[str, str], dict[str, Any] | None] = SharedReads(
            lambda key: api.get_policy(*key)
        )
        self.lists: SharedReads[str, Policies] = SharedReads(api.list_policies)

    async def get_policy(self, namespace: str, name: str) -> dict[str, Any] | None:
        return await self.gets.read((namespace, name))

    async def list_policies(self, namespace: str) -> Policies:
        return await self.lists.read(namespace)


async def read_policies(view: PolicyView, api: PolicyReader, namespace: str, *, deadline: float) -> Policies:
    """The namespace's policies as the API holds them now: a GET (from etcd) of every name the view
    knows, or a LIST before the view has listed once or while a policy of unknown name is created.

    If the API server does not answer within `deadline`, the view's copies decide: a pod is never
    held up, and they are right unless a policy changed in the last moments.
    """
    if not view.synced.is_set():
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(view.synced.wait(), deadline)
    names = view.names(namespace) if view.synced.is_set() else None
    try:
        if names is None:
            return await asyncio.wait_for(api.list_policies(namespace), deadline)
        reads = [asyncio.wait_for(api.get_policy(namespace, name), deadline) for name in names]
        return [body for body in await asyncio.gather(*reads) if body is not None]
    except Exception as exc:
        logger.warning(
            "could not read the policies of %s for an admission (%s); deciding from the operator's view",
            namespace,
            exc or type(exc).__name__,
        )
        return [body for name in names or () if (body := view.watched(namespace, name)) is not None]


# -- the decision ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Inject:
    resolution: Resolution


@dataclass(frozen=True)
class Skip:
    """A pod that policies select but that cannot carry the sidecar: recorded on the pod (annotation
    `breakwater.dev/not-injected`) so the status can say why and what would help."""

    reason: str  # CamelCase, first word of the annotation
    detail: str


Decision = Inject | Skip | None  # None: no policy selects the pod


def decide(
    pod: Mapping[str, Any],
    bundles: Iterable[PolicyBundle],
    *,
    admin_port: int,
    proxy_port: int,
) -> Decision:
    """Whether, and with what, a pod that passed `injection.skip_reason` gets the sidecar; the
    operator's `admin_port` and `proxy_port` unless a selecting policy sets its own (spec.sidecar)."""
    labels = dict((pod.get("metadata") or {}).get("labels") or {})
    bundles = list(bundles)
    admin, proxy = chosen_ports(labels, bundles, admin_port=admin_port, proxy_port=proxy_port)
    resolution = resolve(labels, bundles, admin_port=admin, proxy_port=proxy)
    if not resolution.policies:
        return None
    if (pod.get("spec") or {}).get("hostNetwork"):
        return Skip(
            constants.SKIP_HOST_NETWORK,
            "hostNetwork pods share the node's ports, so the sidecar's listeners would collide",
        )
    wanted = [
        ("the sidecar's admin port", admin),
        *([("the sidecar's forward-proxy port", proxy)] if resolution.transparent else []),
        *((f"listenPort of {name}", port) for name, port in resolution.listen_ports),
    ]
    taken = injection.listen_ports_in_use(pod)
    clashing = [(what, port) for what, port in wanted if port in taken]
    if clashing:
        ports = ", ".join(f"{port} ({what})" for what, port in clashing)
        return Skip(constants.SKIP_LISTEN_PORT_CLASH, f"the app already declares port {ports}")
    meshed = mesh_of(pod)
    inside = in_mesh_range(meshed, wanted) if meshed is not None else []
    if meshed is not None and inside:
        low, high = constants.MESH_PORT_RANGES[meshed]
        ports = ", ".join(f"{port} ({what})" for what, port in inside)
        return Skip(constants.SKIP_MESH_PORT_CLASH, f"{meshed} binds {low}-{high} in its pods: port {ports}")
    return Inject(resolution)
