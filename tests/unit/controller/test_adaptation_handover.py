"""A leader that hands over writes its histories, tuner states and quorum holds; the next one, with a
new Adaptation, reads them and goes on where the last one stopped."""

from __future__ import annotations

import itertools
from dataclasses import dataclass, field
from typing import Any

import pytest

from breakwater.api.adaptive import Threshold
from breakwater.api.report import SidecarReport, UpstreamReport
from breakwater.controller import adaptive
from breakwater.controller.adaptive import Adaptation
from breakwater.controller.fleet import UpstreamFleet

from .adaptive_policy import POLICY, WALL, body, calls_in


class FakeConfigMaps:
    """The history ConfigMaps, by (namespace, name), with the calls of `k8s.configmaps` the state makes."""

    def __init__(self) -> None:
        self.data: dict[tuple[str, str], dict[str, str]] = {}
        self.writes = 0

    def read(self, api: Any, *, namespace: str, name: str) -> dict[str, str]:
        return dict(self.data.get((namespace, name), {}))

    def put_key(self, api: Any, *, namespace: str, name: str, key: str, value: str, **_: Any) -> bool:
        self.data.setdefault((namespace, name), {})[key] = value
        self.writes += 1
        return True


@pytest.fixture
def configmaps(monkeypatch: pytest.MonkeyPatch) -> FakeConfigMaps:
    fake = FakeConfigMaps()
    monkeypatch.setattr(adaptive.configmaps, "read", fake.read)
    monkeypatch.setattr(adaptive.configmaps, "put_key", fake.put_key)
    return fake


def report(calls: int, failures: int) -> SidecarReport:
    upstream = UpstreamReport(
        name="payments", policy=POLICY, state="Closed", calls=calls, failures=failures, latency=[0] * 14
    )
    return SidecarReport(namespace="shop", pod="checkout-1", upstreams=[upstream])


async def test_the_next_leader_starts_from_the_histories_the_last_one_flushed(
    configmaps: FakeConfigMaps,
) -> None:
    first = Adaptation(api=None)
    await first.load("shop")
    first.configure(POLICY, body())
    first.ingest(report(0, 0), now=WALL)
    first.ingest(report(500, 20), now=WALL + 5)
    assert calls_in(first) == 500
    await first.flush()  # the term ends
    assert configmaps.writes == 1

    second = Adaptation(api=None)  # the new leader's term
    await second.load("shop")
    second.configure(POLICY, body())
    assert calls_in(second) == 500
    second.ingest(report(900, 20), now=WALL + 10)  # its first report of the pod: a baseline only
    second.ingest(report(1000, 21), now=WALL + 15)
    assert calls_in(second) == 600


async def test_a_namespace_not_read_back_yet_is_not_overwritten(configmaps: FakeConfigMaps) -> None:
    a = Adaptation(api=None)
    a.configure(POLICY, body())
    a.ingest(report(0, 0), now=WALL)
    await a.flush()
    assert configmaps.writes == 0


# -- quorum holds and hysteresis clocks across a handover --------------------------------------------

FAST = {"enabled": True, "historyWindow": "2m", "hysteresis": "20s", "minimumVolume": 50}


def quorum_body() -> dict[str, Any]:
    b = body()
    b["spec"]["coordination"] = {"quorumPercent": 50}
    return b


def fleet(*, tripped: int, reporting: int = 3) -> UpstreamFleet:
    """One upstream as the status loop sees it: `tripped` pods open on their own, the rest Closed or
    held open by the quorum (ForceOpen: open, not tripped)."""
    return UpstreamFleet(
        name="payments",
        state="Open" if tripped else "Closed",
        open=tripped,
        half_open=0,
        closed=reporting - tripped,
        would_open=0,
        failure_rate=None,
        trips=tripped,
        observe=False,
        tripped=tripped,
    )


async def test_a_quorum_hold_outlives_the_term_that_took_it(configmaps: FakeConfigMaps) -> None:
    first = Adaptation(api=None)
    await first.load("shop")
    first.configure(POLICY, quorum_body())
    taken = first.evaluate(POLICY, [fleet(tripped=2)], wall=WALL, mono=0.0)
    assert taken.engaged == ("payments",)
    assert taken.decided
    await first.persist(POLICY, mono=0.0, force=True)  # what the status loop writes before the push

    second = Adaptation(api=None)  # the first died: no flush
    await second.load("shop")
    second.configure(POLICY, quorum_body())
    assert second.held(POLICY) == {"payments"}  # rendered with fleetOpen: no pod is released
    # One pod of the two recovered: 1 of 3 is below the quorum, but a hold lasts until none is tripped
    # (a new term without the hold would neither keep it nor take it again).
    kept = second.evaluate(POLICY, [fleet(tripped=1)], wall=WALL + 10, mono=10.0)
    assert (kept.engaged, kept.released) == ((), ())
    assert second.held(POLICY) == {"payments"}
    released = second.evaluate(POLICY, [fleet(tripped=0)], wall=WALL + 20, mono=20.0)
    assert released.released == ("payments",)
    await second.persist(POLICY, mono=20.0, force=True)

    third = Adaptation(api=None)
    await third.load("shop")
    third.configure(POLICY, quorum_body())
    assert third.held(POLICY) == set()  # a release is not undone by the next term either


async def test_a_new_term_decides_no_hold_before_it_has_heard_every_pod(configmaps: FakeConfigMaps) -> None:
    first = Adaptation(api=None)
    await first.load("shop")
    first.configure(POLICY, quorum_body())
    first.evaluate(POLICY, [fleet(tripped=2)], wall=WALL, mono=0.0)
    await first.flush()

    second = Adaptation(api=None)
    await second.load("shop")
    second.configure(POLICY, quorum_body())
    # Only the held pod has reached the new leader so far: no pod tripped in its view. Releasing on
    # that would let the whole fleet hit the failing upstream.
    early = second.evaluate(POLICY, [fleet(tripped=0, reporting=1)], wall=WALL + 2, mono=2.0, partial=True)
    assert early.released == ()
    assert second.held(POLICY) == {"payments"}
    heard = second.evaluate(POLICY, [fleet(tripped=2)], wall=WALL + 8, mono=8.0)
    assert (heard.engaged, heard.released) == ((), ())  # kept, not taken a second time


# Traffic of one pod: 2 s reports at 25 calls/s, 10 % failing for a minute (consecutiveFailures is tuned
# up), then 30 % (up again, a hysteresis later), then clean (down, once the noisy buckets left the window).
RATES = [0.1] * 30 + [0.3] * 30 + [0.0] * 90
Decision = tuple[float, Threshold, float, float]  # (when, threshold, before, after)
Clocks = tuple[dict[Threshold, Any], dict[str, Any]]  # tracks (value, changed, pending, since), tuned


@dataclass
class Handover:
    decisions: list[Decision] = field(default_factory=list)
    left: Clocks | None = None  # tracks and tuned values, as the last term ended
    found: Clocks | None = None  # ... as the next one began


def clocks(a: Adaptation) -> Clocks:
    tracks = {
        th: (t.value, t.changed_at, t.pending, t.pending_since)
        for th, t in a.tracks(POLICY, "payments").items()
    }
    return tracks, a.tuned(POLICY)


async def run(spec: dict[str, Any], *, handover_at: int | None = None, graceful: bool = False) -> Handover:
    """The status loop's view of `RATES`: a report and an evaluation every 2 s, the state written when
    an evaluation decided something (as the loop does). At report number `handover_at` the leading
    term ends, with a flush (`graceful`) or dying, and the next one starts: it reads the ConfigMap back,
    and its first report of the pod (a baseline only) is the last one the old term ingested."""
    out = Handover()
    leader = Adaptation(api=None)
    await leader.load("shop")
    leader.configure(POLICY, spec)
    calls = failures = 0
    leader.ingest(report(calls, failures), now=WALL)
    for i, rate in enumerate(RATES, start=1):
        now = WALL + 2 * i
        if i == handover_at:
            out.left = clocks(leader)
            if graceful:
                await leader.flush()
            leader = Adaptation(api=None)
            await leader.load("shop")
            leader.configure(POLICY, spec)
            out.found = clocks(leader)
            leader.ingest(report(calls, failures), now=now - 2)
        calls, failures = calls + 50, failures + round(50 * rate)
        leader.ingest(report(calls, failures), now=now)
        ev = leader.evaluate(POLICY, [fleet(tripped=0)], wall=now, mono=now)
        out.decisions += [(now, c.threshold, c.before, c.after) for cs in ev.changes.values() for c in cs]
        if ev.decided:
            await leader.persist(POLICY, mono=now, force=True)
    return out


HANDOVERS = [20, 31, 40, 47, 70, 100]  # after a change, while the evidence for the next one is pending, ...


def spaced(decisions: list[Decision], hysteresis: float) -> bool:
    for threshold in Threshold:
        times = [d[0] for d in decisions if d[1] is threshold]
        if any(b - a < hysteresis for a, b in itertools.pairwise(times)):
            return False
    return True


@pytest.mark.parametrize("handover_at", HANDOVERS)
async def test_after_a_graceful_handover_the_next_leader_decides_what_one_term_would_have(
    configmaps: FakeConfigMaps, handover_at: int
) -> None:
    spec = body()
    spec["spec"]["adaptive"] = FAST
    alone = await run(spec)
    assert [d for d in alone.decisions if d[1] is Threshold.CONSECUTIVE_FAILURES][1:], "tuned once at most"
    assert spaced(alone.decisions, 20)
    configmaps.data.clear()
    handed = await run(spec, handover_at=handover_at, graceful=True)
    assert handed.found == handed.left
    assert handed.decisions == alone.decisions


@pytest.mark.parametrize("handover_at", HANDOVERS)
async def test_a_leader_that_dies_leaves_its_clocks_and_tuned_values_to_the_next(
    configmaps: FakeConfigMaps, handover_at: int
) -> None:
    """No flush: what the next leader finds was written when it was decided. The history since the last
    write is lost (so later targets may differ from one term's), but the delivered values, the time of
    each threshold's last change and the evidence clocks are the dying leader's: no revert to the
    spec's values, no second change inside one hysteresis period, no clock started over."""
    spec = body()
    spec["spec"]["adaptive"] = FAST
    handed = await run(spec, handover_at=handover_at)
    assert handed.left is not None
    assert handed.left[1], "nothing tuned before the handover"
    assert handed.found == handed.left
    assert spaced(handed.decisions, 20)
