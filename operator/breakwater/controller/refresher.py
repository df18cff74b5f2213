"""One status loop for every policy: recompute the status of policies whose inputs changed, write it when
it differs, post an Event per fleet-level transition.

kopf's per-object timers would wake every policy every second (1,000 policies: 1,000 handler runs a
second with nothing to do). Here a report, a pod change or a reconcile marks a policy dirty; the loop
refreshes dirty policies at most once per `min_interval` each, and every policy once per `sweep`
seconds (stale sidecars, an override's end, figures that only move slowly).
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import datetime
import logging
import time
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import kopf

from breakwater.api.bundle import PolicyBundle
from breakwater.api.constants import CONDITION_CONFLICT, CONDITION_PORT_CONFLICT
from breakwater.api.status import CircuitBreakerPolicyStatus
from breakwater.controller.adaptive import Adaptation, Evaluation
from breakwater.controller.fleet import TransitionClock, UpstreamFleet
from breakwater.controller.pods import PodFacts
from breakwater.controller.reports import FleetStore
from breakwater.controller.resolutions import Resolutions, Verdict
from breakwater.controller.state import OperatorState
from breakwater.controller.status import (
    FleetView,
    desired_status,
    figures_moved,
    fleet_view,
    significant,
    view_pods,
    without_times,
)
from breakwater.controller.trips import TripCounter
from breakwater.controller.tuning_status import UpstreamExtras, override_view

logger = logging.getLogger(__name__)

Key = tuple[str, str]  # (namespace, name)
# Figures alone (failure rates, trips) are written at most every 10 s when they moved (5 points of
# failure rate, or trips), and drift of less is written at most every 60 s: a fleet under traffic
# changes its rates on every report, and each write is a watch event for every client of the API.
FIGURES_EVERY_SECONDS = 10.0
DRIFT_EVERY_SECONDS = 60.0


@dataclass
class PolicyRecord:
    """What the loop needs of one policy: its identity, spec (override windows) and last known status."""

    body: dict[str, Any]  # apiVersion, kind, metadata (name, namespace, uid, generation), spec
    status: dict[str, Any]


def record_of(body: kopf.Body | dict[str, Any]) -> PolicyRecord:
    meta = body.get("metadata") or {}
    slim = {
        "apiVersion": body.get("apiVersion"),
        "kind": body.get("kind"),
        "metadata": {k: meta.get(k) for k in ("name", "namespace", "uid", "generation") if k in meta},
        "spec": dict(body.get("spec") or {}),
    }
    return PolicyRecord(slim, dict(body.get("status") or {}))


def _uid(record: PolicyRecord) -> str:
    return str(record.body["metadata"].get("uid") or "")


StatusWriter = Callable[[str, str, dict[str, Any]], Awaitable[dict[str, Any]]]  # ns, name, patch -> stored
PodsOf = Callable[[str], list[PodFacts]]
EventPoster = Callable[
    [dict[str, Any], str, str, str], Awaitable[None]
]  # (policy body, type, reason, message)


OWNED_STATUS_KEYS = frozenset(
    field.alias or name for name, field in CircuitBreakerPolicyStatus.model_fields.items()
)
"""The top-level status keys the operator writes: one of them gone from what it wants is nulled."""


def gone_keys(wanted: dict[str, Any], stored: dict[str, Any]) -> list[str]:
    """Keys the operator wrote before and no longer wants (`override` once the override is removed)."""
    return [name for name in stored if name in OWNED_STATUS_KEYS and name not in wanted]


def status_patch(wanted: dict[str, Any], stored: dict[str, Any]) -> dict[str, Any]:
    """The merge patch that makes the stored status `wanted`.

    A merge patch keeps the keys it does not name: the ones that went away (summary.message once
    every breaker closed, the whole `override` once it is removed) are nulled, or the stored status
    would keep them and never equal `wanted`.
    """
    patch: dict[str, Any] = dict.fromkeys(gone_keys(wanted, stored))
    for name, value in wanted.items():
        old = stored.get(name)
        if isinstance(value, dict) and isinstance(old, dict):
            value = {**dict.fromkeys((k for k in old if k not in value), None), **value}
        patch[name] = value
    return patch


@dataclass
class Refresher:
    state: OperatorState
    store: FleetStore
    resolutions: Resolutions
    pods_of: PodsOf
    write_status: StatusWriter
    stale_after: float
    on_refresh: Callable[[PolicyRecord], Awaitable[None]] | None = None  # override expiry, before the status
    post_event: EventPoster | None = None
    republish: Callable[[PolicyRecord], Awaitable[None]] | None = None  # tuned thresholds, quorum holds
    min_interval: float = 1.0
    sweep: float = 5.0
    tick: float = 0.2
    concurrency: int = 16  # status writes in flight
    records: dict[Key, PolicyRecord] = field(default_factory=dict)
    trips: TripCounter = field(default_factory=TripCounter)  # fed with every report of the term
    writes: int = 0
    _dirty: set[Key] = field(default_factory=set)
    _dirty_namespaces: set[str] = field(default_factory=set)
    _refreshed_at: dict[Key, float] = field(default_factory=dict)
    _wake: asyncio.Event = field(default_factory=asyncio.Event)
    _tasks: set[asyncio.Task[None]] = field(default_factory=set)

    def _spawn(self, work: Awaitable[None]) -> None:
        async def guarded() -> None:
            try:
                await work
            except Exception as exc:  # Events and history writes are best effort: retried next time
                logger.warning("could not post an Event or persist a history: %s", exc)

        task = asyncio.get_running_loop().create_task(guarded())
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    # -- inputs ------------------------------------------------------------------------------------

    def track(self, body: kopf.Body | dict[str, Any]) -> None:
        record = record_of(body)
        meta = record.body["metadata"]
        key = (str(meta.get("namespace") or ""), str(meta.get("name")))
        old = self.records.get(key)
        if old is not None and not record.status and _uid(old) == _uid(record):
            record.status = old.status
        self.records[key] = record
        self.mark(key, now=True)

    def forget(self, key: Key) -> None:
        self.records.pop(key, None)
        self._dirty.discard(key)
        self._refreshed_at.pop(key, None)
        self.state.last_write.pop(key, None)
        self.state.clocks.pop(key, None)
        self.trips.forget_policy(f"{key[0]}/{key[1]}")

    def mark(self, key: Key, *, now: bool = False) -> None:
        self._dirty.add(key)
        if now:
            self._refreshed_at.pop(key, None)
        self._wake.set()

    def mark_namespace(self, namespace: str) -> None:
        self._dirty_namespaces.add(namespace)
        self._wake.set()

    # -- the loop ----------------------------------------------------------------------------------

    async def run(self) -> None:
        last_sweep = time.monotonic()
        while True:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), self.tick)
            self._wake.clear()
            await asyncio.sleep(self.tick)  # gather a burst of reports into one pass
            now = time.monotonic()
            if now - last_sweep >= self.sweep:
                last_sweep = now
                self._dirty.update(self.records)
            if self._dirty_namespaces:
                spaces, self._dirty_namespaces = self._dirty_namespaces, set()
                self._dirty.update(k for k in self.records if k[0] in spaces)
            due = [k for k in self._dirty if now - self._refreshed_at.get(k, 0.0) >= self.min_interval]
            for key in due:
                self._dirty.discard(key)
                self._refreshed_at[key] = now
            # `concurrency` workers share the due policies: the writes overlap (a storm of 1,000
            # policies would otherwise wait for 1,000 PATCHes in a row), and each worker yields after
            # every policy. A Task per policy would run every refresh that writes nothing in one turn
            # of the loop (1,000 policies: seconds), while the report datagrams wait in the socket.
            queue = iter(due)
            await asyncio.gather(*(self._drain(queue) for _ in range(min(self.concurrency, len(due)))))

    async def _drain(self, queue: Iterator[Key]) -> None:
        for key in queue:
            try:
                await self.refresh(key)
            except Exception:
                logger.exception("status refresh of policy %s/%s failed; retrying", *key)
                self._dirty.add(key)
            await asyncio.sleep(0)

    async def refresh(self, key: Key) -> None:
        record = self.records.get(key)
        if record is None:
            return
        if self.on_refresh is not None:
            await self.on_refresh(record)
        namespace, name = key
        state = self.state
        bundles = await state.bundles.get(namespace)
        bundle: PolicyBundle | None = bundles.get(name)

        def resolver(labels: tuple[tuple[str, str], ...]) -> Verdict:
            return self.resolutions.verdict(namespace, labels, bundles)

        policy_id = f"{namespace}/{name}"
        view = view_pods(policy_id, bundle, self.pods_of(namespace), resolver)
        # A new term (a restart, or another replica taking over) keeps the states written before until
        # each pod is heard, for as long as a pod may be silent before it counts as stale: a sidecar
        # whose reports went to the replica that stopped needs a report interval, and kube-proxy a
        # sync, before they reach this one.
        grace = time.monotonic() - state.started_at < self.stale_after
        fleet = fleet_view(
            policy_id,
            bundle,
            view,
            resolver,
            self.store.in_namespace(namespace),
            stale_after=self.stale_after,
            grace=grace,
        )
        if bundle is not None:
            fleet = self._with_trips(record, policy_id, fleet)
        extras, tuning = await self._adapt(record, key, fleet)
        if extras and bundle is not None and self.republish is not None:
            bundle = (await state.bundles.get(namespace)).get(name)  # republished with new thresholds
        generation = int(record.body["metadata"].get("generation") or 0)
        override = override_view(
            record.body.get("spec") or {},
            now=datetime.datetime.now(datetime.UTC),
            expired_when_applied=state.expired_on_arrival.get(key) == generation,
        )
        clock = state.clocks.setdefault(key, TransitionClock())
        previous = record.status
        wanted = desired_status(
            generation=int(record.body["metadata"].get("generation") or 0),
            previous=previous,
            outcome=state.outcomes.get(key),
            bundle=bundle,
            view=view,
            fleet=fleet,
            clock=clock,
            mode=bundle.upstreams[0].mode if bundle and bundle.upstreams else None,
            extras=extras,
            override=override,
            tuning=tuning,
        ).to_dict()
        comparable_previous = {k: previous.get(k) for k in wanted}
        gone = gone_keys(wanted, previous)
        if not gone and without_times(wanted) == without_times(comparable_previous):
            return
        # State changes are written at once; figures alone (failure rate, trips) at most every 10 s.
        if not gone and significant(wanted) == significant(comparable_previous):
            since = time.monotonic() - state.last_write.get(key, 0)
            if since < FIGURES_EVERY_SECONDS:
                return  # the sweep comes back when the figures may be written
            if since < DRIFT_EVERY_SECONDS and not figures_moved(wanted, comparable_previous):
                return
        patch = status_patch(wanted, previous)
        state.last_write[key] = time.monotonic()
        record.status = await self.write_status(namespace, name, patch)
        self.writes += 1
        self._post_transition_events(record, previous, wanted)
        self._post_conflicts(record, previous, wanted)

    def _with_trips(self, record: PolicyRecord, policy_id: str, fleet: FleetView) -> FleetView:
        """The fleet view with trips since the policy was created (`controller.trips`), not the sum of
        the live sidecars' counters."""
        stored = {
            str(u.get("name")): int(u.get("trips") or 0)
            for u in record.status.get("upstreams") or ()
            if isinstance(u, dict)
        }
        totals = self.trips.totals(policy_id, _uid(record), (f.name for f in fleet.upstreams), stored)
        return dataclasses.replace(
            fleet, upstreams=tuple(dataclasses.replace(f, trips=totals[f.name]) for f in fleet.upstreams)
        )

    async def _adapt(
        self, record: PolicyRecord, key: Key, fleet: FleetView
    ) -> tuple[dict[str, UpstreamExtras], str | None]:
        """Run the tuner and the quorum for one policy: republish what changed, post its Events, and
        return what the status shows of them."""
        adaptation: Adaptation | None = self.state.adaptive
        if adaptation is None or not fleet.upstreams:
            return {}, None
        policy = f"{key[0]}/{key[1]}"
        await adaptation.load(key[0])
        if adaptation.configure(policy, record.body) is None:
            return {}, None
        mono = time.monotonic()
        evaluation = adaptation.evaluate(
            policy, fleet.upstreams, wall=time.time(), mono=mono, partial=fleet.hold
        )
        delivers = adaptation.delivers(policy)
        if evaluation.decided:
            # Written before the sidecars hear of it: a leader that dies after the push would otherwise
            # leave the next one a state without the change (it would render the old value, or no hold).
            try:
                await adaptation.persist(policy, mono=mono, force=True)
            except Exception as exc:
                logger.warning("could not persist the adaptive state of %s: %s", policy, exc)
        else:
            self._spawn(adaptation.persist(policy, mono=mono))
        if ((evaluation.changes and delivers) or evaluation.republish) and self.republish is not None:
            await self.republish(record)
        self._post_adaptive_events(
            record, evaluation, fleet.upstreams, delivers=delivers, quorum_on=adaptation.quorum_on(policy)
        )
        held = adaptation.held(policy)
        extras = {
            f.name: UpstreamExtras(
                tracks=adaptation.tracks(policy, f.name),
                delivers=delivers,
                quorum=(
                    f"held open on every pod since the quorum (spec.coordination.quorumPercent) was "
                    f"reached; now {f.tripped}/{f.reporting} pods tripped, probing"
                    if f.name in held
                    else None
                ),
            )
            for f in fleet.upstreams
        }
        tuned = sum(1 for e in extras.values() for t in e.tracks.values() if t.tuned)
        if delivers:
            tuning = f"On ({tuned} tuned)" if tuned else "On"
        elif adaptation.enabled(policy):
            tuning = "Suggesting (Observe)"
        else:  # the tuner runs anyway: its values are in `suggested` once it has any
            tuning = "Suggesting (tuning off)" if any(e.tracks for e in extras.values()) else "Off"
        return extras, tuning

    def _post_adaptive_events(
        self,
        record: PolicyRecord,
        evaluation: Evaluation,
        fleets: tuple[UpstreamFleet, ...],
        *,
        delivers: bool,
        quorum_on: bool,
    ) -> None:
        meta = record.body["metadata"]
        namespace, name = str(meta.get("namespace") or ""), str(meta.get("name"))
        posts: list[tuple[str, str, str, str]] = []  # (upstream, type, reason, message)
        if delivers:
            for upstream, changes in evaluation.changes.items():
                for c in changes:
                    message = f"upstream {upstream}: {c.threshold} {c.before:g} -> {c.after:g} ({c.reason})"
                    posts.append((upstream, "Normal", "ThresholdTuned", message))
        by_name = {f.name: f for f in fleets}
        for upstream in evaluation.engaged:
            f = by_name[upstream]
            message = (
                f"upstream {upstream}: {f.tripped}/{f.reporting} pods tripped, at or above the quorum: "
                "opened on every pod of the policy"
            )
            posts.append((upstream, "Warning", "QuorumOpen", message))
        for upstream in evaluation.released:
            cause = (
                _release_cause(by_name.get(upstream))
                if quorum_on
                else "the policy no longer asks for a quorum in Enforce mode"
            )
            message = f"upstream {upstream}: {cause}; every pod is released"
            posts.append((upstream, "Normal", "QuorumReleased", message))
        for upstream, kind, reason, message in posts:
            logger.info("policy %s/%s: %s", namespace, name, message)
            admitted, skipped = self.state.events.admit((namespace, name, f"adaptive/{upstream}"))
            if not admitted or self.post_event is None:
                continue
            if skipped:
                message += f"; {skipped} earlier changes not shown (rate-limited)"
            self._spawn(self.post_event(record.body, kind, reason, message))

    def _post_conflicts(self, record: PolicyRecord, previous: dict[str, Any], wanted: dict[str, Any]) -> None:
        """A Warning Event, named after its condition, when PortConflict or Conflict turns True or names
        other pods, ports or policies (rate-limited): the pods it concerns do not run what the user wrote."""
        for kind, bucket in ((CONDITION_PORT_CONFLICT, "ports"), (CONDITION_CONFLICT, "upstreams")):
            before, now = _condition_of(previous, kind), _condition_of(wanted, kind)
            message = str(now.get("message", ""))
            if now.get("status") != "True" or (before.get("status"), before.get("message")) == (
                "True",
                message,
            ):
                continue
            meta = record.body["metadata"]
            namespace, name = str(meta.get("namespace") or ""), str(meta.get("name"))
            fields = {"namespace": namespace, "policy": name, "reason": kind}
            logger.warning("policy %s/%s: %s", namespace, name, message, extra={"fields": fields})
            admitted, _ = self.state.events.admit((namespace, name, bucket))
            if admitted and self.post_event is not None:
                self._spawn(self.post_event(record.body, "Warning", kind, message))

    def _post_transition_events(
        self, record: PolicyRecord, previous: dict[str, Any], wanted: dict[str, Any]
    ) -> None:
        meta = record.body["metadata"]
        namespace, name = str(meta.get("namespace") or ""), str(meta.get("name"))
        before = {u.get("name"): u for u in previous.get("upstreams") or ()}
        for upstream in wanted.get("upstreams") or ():
            old_state = str((before.get(upstream["name"]) or {}).get("state", "Unknown"))
            new_state = str(upstream["state"])
            if old_state == new_state or "Unknown" in (old_state, new_state):
                continue
            admitted, skipped = self.state.events.admit((namespace, name, upstream["name"]))
            if not admitted:
                continue
            total = upstream["open"] + upstream["halfOpen"] + upstream["closed"]
            message = (
                f"upstream {upstream['name']}: {old_state} -> {new_state} "
                f"(open on {upstream['open']}/{total} pods, half-open on {upstream['halfOpen']})"
            )
            if skipped:
                message += f"; {skipped} earlier transitions not shown (a flapping upstream is rate-limited)"
            kind = "Normal" if new_state == "Closed" else "Warning"
            if self.post_event is not None:
                self._spawn(self.post_event(record.body, kind, f"Upstream{new_state}", message))
            fields = {"namespace": namespace, "policy": name, "upstream": upstream["name"]}
            fields["state"] = new_state
            logger.info("policy %s/%s: %s", namespace, name, message, extra={"fields": fields})


def _condition_of(status: dict[str, Any], kind: str) -> dict[str, Any]:
    return next((c for c in status.get("conditions") or () if c.get("type") == kind), {})


def _release_cause(fleet: UpstreamFleet | None) -> str:
    """Why a quorum hold ended: a trial closed a tripped pod's breaker (a pod reports Closed: held pods
    report Open), or no pod that tripped reports any more and none is left to probe (the pods were
    deleted or restarted, and new pods start held): then every pod judges the upstream on its own again,
    and the quorum engages anew if enough of them trip."""
    if fleet is None or fleet.closed:
        return "the pods that tripped closed again through their trials"
    return "no pod that tripped reports any more (deleted or restarted), so none was left probing"
