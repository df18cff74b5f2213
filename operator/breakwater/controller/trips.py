"""`status.upstreams[].trips`: trips since the policy was created, kept when pods restart or go away and
when the operator restarts or another replica takes over.

A sidecar's counter covers only its own life. The leader keeps, per (policy, upstream), what it has
counted during its term, and reads the written status once as a floor:

- `first`: the counter of each pod's first report this term. It may hold trips the stored status
  already counts (a previous term saw them), so it only competes with the floor: max(floor, first).
- `added`: every increase after that: a pod's counter going up, and the whole counter of a life that
  started during the term (a sidecar restart, a pod recreated under the same name, a new breaker).
  Nothing in it can be in the stored status: it happened after this term's first report of that pod.

total = max(floor, first) + added. Neither part ever goes down, so neither does the total: a pod that
leaves takes nothing with it (its counts stay in the sums), and a restarted sidecar counting from zero
adds from zero. A pod's new life is told by its uid, by a sequence number at or below the last one with
a later send time (a report of the old life that arrives late, with an earlier send time, is ignored),
or by a breaker's counter below the last one.

A recreated policy (another uid) or an upstream gone from the spec starts from zero: its tally is
dropped, and the counters pods reported so far stay their baselines, so only later increases count.
"""

from __future__ import annotations

import sys
import time
from collections import deque
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

from breakwater.api.report import SidecarReport

__all__ = ["TripCounter"]

RETAIN_GONE_SECONDS = 300.0  # a pod's record outlives the pod this long: a late report is not a new pod

PolicyId = str  # namespace/name
Key = tuple[PolicyId, str]  # (policy, upstream)


@dataclass(slots=True)
class _PodLife:
    """The last report taken from one pod, and each of its breakers' trip counters."""

    uid: str
    seq: int
    sent_at: float
    trips: dict[Key, int] = field(default_factory=dict)
    gone_at: float | None = None  # monotonic: when the pod was deleted


@dataclass(slots=True)
class _Tally:
    uid: str | None = None  # the policy's metadata.uid, once a refresh told it
    floor: int = 0  # the stored status's trips when this term first wrote the upstream
    first: int = 0
    added: int = 0

    @property
    def total(self) -> int:
        return max(self.floor, self.first) + self.added


@dataclass
class TripCounter:
    """The leader's trip tallies for one term (`controller.refresher.Refresher.trips`)."""

    pods: dict[tuple[str, str], _PodLife] = field(default_factory=dict)  # (namespace, pod) -> life
    tallies: dict[PolicyId, dict[str, _Tally]] = field(default_factory=dict)  # policy -> upstream -> tally
    _gone: deque[tuple[float, tuple[str, str]]] = field(default_factory=deque)  # oldest first

    def observe(self, report: SidecarReport) -> None:
        """Count what one accepted report adds."""
        pod = (report.namespace, report.pod)
        life = self.pods.get(pod)
        first_seen = life is None
        if life is not None:
            if report.pod_uid and life.uid and report.pod_uid != life.uid:
                life = None  # another pod under the same name
            elif report.seq <= life.seq:
                if report.sent_at <= life.sent_at:
                    return  # sent before the last one taken: nothing newer to count
                life = None  # the sidecar restarted: its sequence started again
        if life is None:
            life = self.pods[(sys.intern(pod[0]), sys.intern(pod[1]))] = _PodLife(
                report.pod_uid, report.seq, report.sent_at
            )
        else:
            life.seq, life.sent_at, life.gone_at = report.seq, report.sent_at, None
            life.uid = life.uid or report.pod_uid
        for upstream in report.upstreams:
            key = (upstream.policy, upstream.name)
            tally = self._tally(*key)
            last = life.trips.get(key)
            now = upstream.trips
            if first_seen:
                tally.first += now
            elif last is None or now < last:
                tally.added += now  # a breaker (or its sidecar) that started after the last report
            else:
                tally.added += now - last
            if last is None:
                key = (sys.intern(key[0]), sys.intern(key[1]))
            life.trips[key] = now

    def forget_pod(self, namespace: str, pod: str, *, now: float | None = None) -> None:
        """The pod was deleted. Its counts stay in the tallies; its record stays a while, so a report
        it sent just before (or one relayed late) is taken as the same life, not as a new pod."""
        now = time.monotonic() if now is None else now
        life = self.pods.get((namespace, pod))
        if life is not None and life.gone_at is None:
            life.gone_at = now
            self._gone.append((now, (namespace, pod)))
        while self._gone and now - self._gone[0][0] > RETAIN_GONE_SECONDS:
            _, key = self._gone.popleft()
            found = self.pods.get(key)
            if found is not None and found.gone_at is not None and now - found.gone_at > RETAIN_GONE_SECONDS:
                del self.pods[key]

    def forget_policy(self, policy: PolicyId) -> None:
        """The policy was deleted: a policy of that name created later counts from zero."""
        self.tallies.pop(policy, None)

    def _tally(self, policy: PolicyId, upstream: str) -> _Tally:
        by_name = self.tallies.get(policy)
        if by_name is None:
            by_name = self.tallies[sys.intern(policy)] = {}
        tally = by_name.get(upstream)
        if tally is None:
            tally = by_name[sys.intern(upstream)] = _Tally()
        return tally

    def totals(
        self, policy: PolicyId, uid: str, upstreams: Iterable[str], stored: Mapping[str, int]
    ) -> dict[str, int]:
        """The trips to write for each of the policy's upstreams. `stored` is the status as written
        (name -> trips); it is read once per term and upstream, as the floor."""
        names = set(upstreams)
        by_name = self.tallies.get(policy, {})
        for name in [n for n in by_name if n not in names]:
            # Gone from the spec: if it comes back, it counts from zero, whatever the status still says.
            by_name[name] = _Tally(uid=uid)
        out = {}
        for name in names:
            tally = self._tally(policy, name)
            if tally.uid is not None and tally.uid != uid:
                tally = self.tallies[policy][name] = _Tally()  # the policy was deleted and created again
            if tally.uid is None:
                tally.uid = uid
                tally.floor = max(0, stored.get(name, 0))
            out[name] = tally.total
        return out
