"""The operator's side of adaptive thresholds and fleet quorum: history from reports, the tuner's steps,
what is delivered to the sidecars and what the status shows.

- Every accepted report is ingested (`ingest`) into the history of each (policy, upstream) it speaks of,
  for every policy (a policy with tuning off still gets suggestions).
- The status loop calls `evaluate` on each refresh; the tuner steps once per bucket width, or every
  `TUNE_EVERY_SECONDS` (30 s) when the buckets are wider, frozen while any reporting pod has the
  upstream open or half-open.
- With `spec.adaptive.enabled` (and the policy not in Observe), `tuned` gives the renderer the
  thresholds to deliver; otherwise the tuner's values are only shown as `suggested`.
- `spec.coordination.quorumPercent`: `held` names the upstreams the renderer marks `fleetOpen`.
- Histories, tuner state (the hysteresis clocks) and quorum holds persist in the ConfigMap
  `breakwater-adaptive-history` of each namespace (one key per policy, every `PERSIST_EVERY_SECONDS`,
  and at once when a threshold changes or a hold is taken or released, before the sidecars are told),
  read back once per namespace by a new term; docs/design.md says why there and not in the status.
"""

from __future__ import annotations

import asyncio
import json
import logging
import math
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from breakwater.adaptive.history import History, PodCounters
from breakwater.adaptive.ingest import ingest
from breakwater.adaptive.tuner import Change, Configured, Track, TunerState, evidence, step, tuned_settings
from breakwater.api.adaptive import Adaptive, Threshold
from breakwater.api.constants import HISTORY_CONFIGMAP_NAME
from breakwater.api.policy import PolicyError, parse_spec
from breakwater.api.report import SidecarReport, TransitionReport
from breakwater.breaker.settings import BreakerSettings, Mode
from breakwater.controller.fleet import UpstreamFleet
from breakwater.k8s import configmaps

logger = logging.getLogger(__name__)

TUNE_EVERY_SECONDS = 30.0
PERSIST_EVERY_SECONDS = 300.0
FORMAT = 1

PolicyId = str  # namespace/name
Key = tuple[PolicyId, str]  # (policy, upstream)


@dataclass(frozen=True, slots=True)
class PolicyParams:
    """What tuning needs of one policy generation, parsed once."""

    generation: int
    adaptive: Adaptive
    observe: bool
    quorum_percent: int | None
    upstreams: dict[str, tuple[BreakerSettings, Configured]]

    @property
    def delivers(self) -> bool:
        """Tuned values go to the sidecars (else they are only suggested)."""
        return self.adaptive.enabled and not self.observe


@dataclass(slots=True)
class UpstreamTuning:
    history: History
    state: TunerState = field(default_factory=TunerState)
    evaluated_at: float = -math.inf  # monotonic
    # The last counters of each reporting pod, by (namespace, pod): here rather than one dict per pod
    # keyed by upstream, ~290 bytes less per pod (3 MiB at 10,000), and gone with the upstream.
    pods: dict[tuple[str, str], PodCounters] = field(default_factory=dict)


@dataclass(frozen=True)
class Evaluation:
    """What one `evaluate` changed: tuner changes per upstream, quorum holds taken or released, and
    the upstreams whose hysteresis clocks started or stopped (`Track.pending`, `pending_since`)."""

    changes: dict[str, list[Change]]
    engaged: tuple[str, ...] = ()
    released: tuple[str, ...] = ()
    clocks: tuple[str, ...] = ()

    @property
    def republish(self) -> bool:
        return bool(self.engaged or self.released)

    @property
    def decided(self) -> bool:
        """Something the next leader must find to go on from here (a change, a hold, a hysteresis clock):
        written at once. Clocks move at most once per evaluation (every 30 s, or every bucket width when
        that is shorter)."""
        return bool(self.changes or self.engaged or self.released or self.clocks)


_SHARED: dict[str, Any] = {}  # equal parameter objects, kept once (most policies share the defaults)
_SHARED_MAX = 4096


def _shared(value: Any) -> Any:
    key = f"{type(value).__name__}:{value!r}"
    found = _SHARED.get(key)
    if found is not None:
        return found
    if len(_SHARED) < _SHARED_MAX:
        _SHARED[key] = value
    return value


def params_of(body: dict[str, Any]) -> PolicyParams | None:
    try:
        spec = parse_spec(body.get("spec") or {})
    except PolicyError:
        return None
    upstreams = {}
    for upstream in spec.upstreams:
        settings = spec.settings_for(upstream.name)
        breaker = settings.breaker_settings()
        configured = Configured.of(breaker, timeout_seconds=settings.timeout.seconds)
        upstreams[sys.intern(upstream.name)] = (_shared(breaker), _shared(configured))
    return PolicyParams(
        generation=int((body.get("metadata") or {}).get("generation") or 0),
        adaptive=_shared(spec.adaptive),
        observe=Mode(spec.mode) is Mode.OBSERVE,
        quorum_percent=spec.coordination.quorum_percent,
        upstreams=upstreams,
    )


def _clocks(state: TunerState) -> dict[Threshold, tuple[int, float]]:
    return {th: (t.pending, t.pending_since) for th, t in state.tracks.items() if t.pending}


@dataclass
class Adaptation:
    """Histories, tuner states and quorum holds of every policy this operator serves."""

    api: Any
    params: dict[PolicyId, PolicyParams] = field(default_factory=dict)
    tunings: dict[Key, UpstreamTuning] = field(default_factory=dict)
    holds: dict[PolicyId, set[str]] = field(default_factory=dict)
    loaded: set[str] = field(default_factory=set)
    persisted_at: dict[PolicyId, float] = field(default_factory=dict)
    _loading: dict[str, asyncio.Lock] = field(default_factory=dict)
    _writing: dict[PolicyId, asyncio.Lock] = field(default_factory=dict)  # one write of a key at a time

    # -- policies ------------------------------------------------------------------------------------

    def configure(self, policy: PolicyId, body: dict[str, Any]) -> PolicyParams | None:
        generation = int((body.get("metadata") or {}).get("generation") or 0)
        known = self.params.get(policy)
        if known is not None and known.generation == generation:
            return known
        params = params_of(body)
        if params is None:
            return known
        self.params[policy] = params
        window = params.adaptive.history_window.seconds
        held = self.holds.get(policy)
        if held:
            held.intersection_update(params.upstreams)  # an upstream gone from the spec holds nothing
        for name in params.upstreams:
            tuning = self.tunings.get((policy, name))
            if tuning is not None:
                tuning.history = tuning.history.rescaled(window)
        return params

    def forget(self, policy: PolicyId) -> None:
        self.params.pop(policy, None)
        self.holds.pop(policy, None)
        self.persisted_at.pop(policy, None)
        self._writing.pop(policy, None)
        for key in [k for k in self.tunings if k[0] == policy]:
            del self.tunings[key]

    def forget_pod(self, namespace: str, pod: str) -> None:
        prefix, key = f"{namespace}/", (namespace, pod)
        for (policy, _), tuning in self.tunings.items():
            if policy.startswith(prefix):
                tuning.pods.pop(key, None)

    def _tuning(self, key: Key) -> UpstreamTuning | None:
        tuning = self.tunings.get(key)
        if tuning is None:
            params = self.params.get(key[0])
            if params is None or key[1] not in params.upstreams:
                return None
            tuning = self.tunings[key] = UpstreamTuning(
                History.for_window(params.adaptive.history_window.seconds)
            )
        return tuning

    # -- reports -------------------------------------------------------------------------------------

    def ingest(self, report: SidecarReport, *, now: float) -> None:
        """Add one accepted report to the histories of the upstreams it speaks of."""
        pod = (report.namespace, report.pod)
        moves: dict[Key, list[TransitionReport]] = {}
        for t in report.transitions:
            moves.setdefault((t.policy, t.upstream), []).append(t)
        for upstream in report.upstreams:
            key = (upstream.policy, upstream.name)
            tuning = self._tuning(key)
            if tuning is None:
                continue
            counters = tuning.pods.get(pod)
            if counters is None:
                counters = tuning.pods[(sys.intern(pod[0]), sys.intern(pod[1]))] = PodCounters()
            ingest(tuning.history, counters, upstream, moves.get(key, ()), at=now)

    # -- the tuner and the quorum --------------------------------------------------------------------

    def evaluate(
        self,
        policy: PolicyId,
        fleets: Sequence[UpstreamFleet],
        *,
        wall: float,
        mono: float,
        partial: bool = False,
    ) -> Evaluation:
        """One step of the tuner and the quorum. `partial`: a new term has not heard every pod yet
        (`FleetView.hold`): an open pod may be among the silent ones, so the tuner stays frozen and no
        hold is taken or released on that view."""
        params = self.params.get(policy)
        if params is None:
            return Evaluation({})
        changes: dict[str, list[Change]] = {}
        clocks: list[str] = []
        for fleet in fleets:
            entry = params.upstreams.get(fleet.name)
            tuning = self._tuning((policy, fleet.name))
            if entry is None or tuning is None:
                continue
            # Once per bucket width, and at least every 30 s when a bucket is wider than that.
            if mono - tuning.evaluated_at < min(TUNE_EVERY_SECONDS, tuning.history.width):
                continue
            tuning.evaluated_at = mono
            settings, configured = entry
            tuning.history.advance(wall)
            current = tuned_settings(settings, tuning.state) if params.delivers else settings
            ev = evidence(
                tuning.history, now=wall, trip_percent=current.failure_rate_percent, pods=fleet.reporting
            )
            frozen = partial or bool(fleet.open or fleet.half_open or fleet.would_open)
            before = tuning.state
            tuning.state, made = step(before, ev, configured, params.adaptive, now=wall, frozen=frozen)
            if made:
                changes[fleet.name] = made
            elif _clocks(before) != _clocks(tuning.state):
                clocks.append(fleet.name)
        engaged, released = ((), ()) if partial else self._quorum(policy, params, fleets)
        return Evaluation(changes, engaged, released, tuple(clocks))

    def _quorum(
        self, policy: PolicyId, params: PolicyParams, fleets: Sequence[UpstreamFleet]
    ) -> tuple[tuple[str, ...], tuple[str, ...]]:
        held = self.holds.setdefault(policy, set())
        engaged, released = [], []
        for fleet in fleets:
            quorum = params.quorum_percent
            if fleet.name in held:
                if quorum is None or params.observe or fleet.tripped == 0:
                    held.discard(fleet.name)  # the pods that tripped closed through their trials
                    released.append(fleet.name)
            elif (
                quorum is not None
                and not params.observe
                and fleet.reporting
                and fleet.tripped * 100 >= quorum * fleet.reporting
            ):
                held.add(fleet.name)
                engaged.append(fleet.name)
        return tuple(engaged), tuple(released)

    # -- what the renderer and the status read -------------------------------------------------------

    def tuned(self, policy: PolicyId) -> dict[str, BreakerSettings]:
        """The thresholds to deliver, per upstream the tuner changed (empty: deliver the spec's)."""
        params = self.params.get(policy)
        if params is None or not params.delivers:
            return {}
        out = {}
        for name, (settings, _) in params.upstreams.items():
            tuning = self.tunings.get((policy, name))
            if tuning is not None and any(t.tuned for t in tuning.state.tracks.values()):
                out[name] = tuned_settings(settings, tuning.state)
        return out

    def held(self, policy: PolicyId) -> set[str]:
        return self.holds.get(policy, set())

    def tracks(self, policy: PolicyId, upstream: str) -> dict[Threshold, Track]:
        tuning = self.tunings.get((policy, upstream))
        return dict(tuning.state.tracks) if tuning is not None else {}

    def delivers(self, policy: PolicyId) -> bool:
        params = self.params.get(policy)
        return params is not None and params.delivers

    def quorum_on(self, policy: PolicyId) -> bool:
        """The policy's generation in force asks for a quorum that can act (Enforce mode)."""
        params = self.params.get(policy)
        return params is not None and params.quorum_percent is not None and not params.observe

    def enabled(self, policy: PolicyId) -> bool:
        params = self.params.get(policy)
        return params is not None and params.adaptive.enabled

    # -- persistence ---------------------------------------------------------------------------------

    def encode(self, policy: PolicyId) -> str:
        upstreams = {}
        for (owner, name), tuning in self.tunings.items():
            if owner != policy:
                continue
            upstreams[name] = {
                "history": tuning.history.encode(),
                "tuner": {
                    str(th): [t.value, t.changed_at, t.pending, t.pending_since]
                    for th, t in tuning.state.tracks.items()
                },
            }
        record: dict[str, Any] = {"version": FORMAT, "upstreams": upstreams}
        held = self.holds.get(policy)
        if held:
            record["held"] = sorted(held)
        return json.dumps(record, separators=(",", ":"))

    def restore(self, policy: PolicyId, text: str) -> None:
        """Merge a persisted record into what reports built since start-up (a restart's first reports)."""
        try:
            record = json.loads(text)
            if record.get("version") != FORMAT:
                raise ValueError(f"format {record.get('version')}")
            held = record.get("held") or []  # absent in records written before holds were persisted
            if not isinstance(held, list) or not all(isinstance(name, str) for name in held):
                raise ValueError(f"held: expected a list of upstream names, got {held!r}")
            for name, saved in (record.get("upstreams") or {}).items():
                history = History.decode(saved["history"])
                tracks = {
                    Threshold(th): Track(float(v), None if at is None else float(at), int(p), float(since))
                    for th, (v, at, p, since) in (saved.get("tuner") or {}).items()
                }
                key = (policy, name)
                tuning = self.tunings.get(key)
                if tuning is None:
                    self.tunings[key] = UpstreamTuning(history, TunerState(tracks))
                else:
                    tuning.history = history.merged(tuning.history)
                    tuning.state = TunerState(tracks)
            if held:
                self.holds.setdefault(policy, set()).update(sys.intern(name) for name in held)
        except (ValueError, KeyError, TypeError) as exc:
            logger.warning("ignoring the persisted history of %s (rebuilt from reports): %s", policy, exc)

    async def load(self, namespace: str) -> None:
        """Read the namespace's persisted histories once (after a restart); absent ones start empty."""
        if namespace in self.loaded:
            return
        lock = self._loading.setdefault(namespace, asyncio.Lock())
        async with lock:
            if namespace in self.loaded:
                return
            data = await asyncio.to_thread(
                configmaps.read, self.api, namespace=namespace, name=HISTORY_CONFIGMAP_NAME
            )
            for key, text in data.items():
                if key.endswith(".json"):
                    self.restore(f"{namespace}/{key[: -len('.json')]}", text)
            self.loaded.add(namespace)
            now = time.monotonic()
            for key in data:
                self.persisted_at[f"{namespace}/{key[: -len('.json')]}"] = now

    async def persist(self, policy: PolicyId, *, mono: float, force: bool = False) -> None:
        """Write the policy's record when `PERSIST_EVERY_SECONDS` passed since the last write (`force`:
        now). Writes of one key never overlap, and each encodes the state when it starts, so the last
        write is the newest state."""
        last = self.persisted_at.setdefault(policy, mono)
        if not force and mono - last < PERSIST_EVERY_SECONDS:
            return
        self.persisted_at[policy] = mono
        namespace, _, name = policy.partition("/")
        async with self._writing.setdefault(policy, asyncio.Lock()):
            await asyncio.to_thread(
                configmaps.put_key,
                self.api,
                namespace=namespace,
                name=HISTORY_CONFIGMAP_NAME,
                key=f"{name}.json",
                value=self.encode(policy),
                component="adaptive-history",
            )

    async def flush(self) -> None:
        """Write every record now (a leader handing over: the next one reads them). Only namespaces
        read back already: writing one before would drop what the last writer persisted."""
        mono = time.monotonic()
        for policy in list(self.params):
            if policy.partition("/")[0] in self.loaded:
                await self.persist(policy, mono=mono, force=True)

    async def remove(self, policy: PolicyId) -> None:
        namespace, _, name = policy.partition("/")
        self.forget(policy)
        await asyncio.to_thread(
            configmaps.remove_key,
            self.api,
            namespace=namespace,
            name=HISTORY_CONFIGMAP_NAME,
            key=f"{name}.json",
        )
