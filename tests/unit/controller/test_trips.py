"""`status.upstreams[].trips`: since the policy was created, across pod restarts and deletions, operator
restarts and changes of leader; never less than written, never a trip counted twice."""

from __future__ import annotations

from dataclasses import dataclass, field

from hypothesis import given, settings
from hypothesis import strategies as st

from breakwater.api.report import SidecarReport, UpstreamReport
from breakwater.controller.trips import RETAIN_GONE_SECONDS, TripCounter

POLICY = "shop/payments"
UID = "uid-1"


def report(
    pod: str,
    trips: int,
    *,
    seq: int,
    sent_at: float | None = None,
    uid: str = "",
    upstream: str = "payments",
    mode: str = "Enforce",
) -> SidecarReport:
    return SidecarReport(
        namespace="shop",
        pod=pod,
        pod_uid=uid or f"uid-of-{pod}",
        seq=seq,
        sent_at=float(seq) if sent_at is None else sent_at,
        upstreams=[UpstreamReport(name=upstream, policy=POLICY, state="Closed", mode=mode, trips=trips)],
    )


def total(
    counter: TripCounter, stored: int = 0, *, uid: str = UID, upstreams: tuple[str, ...] = ("payments",)
) -> int:
    return counter.totals(POLICY, uid, upstreams, {"payments": stored})["payments"]


def test_a_pods_counter_counts_as_it_grows() -> None:
    counter = TripCounter()
    for seq, trips in enumerate([0, 1, 1, 3]):
        counter.observe(report("a", trips, seq=seq))
    counter.observe(report("b", 2, seq=0))
    assert total(counter) == 5


def test_a_restarted_sidecar_counts_from_zero_on_top_of_what_it_had() -> None:
    counter = TripCounter()
    counter.observe(report("a", 0, seq=0))
    counter.observe(report("a", 4, seq=7, sent_at=100.0))
    counter.observe(report("a", 1, seq=0, sent_at=130.0))  # its new life: sequence and counter start again
    assert total(counter) == 5
    counter.observe(report("a", 2, seq=1, sent_at=135.0))
    assert total(counter) == 6


def test_a_restart_is_told_by_the_sequence_even_when_the_new_counter_is_not_lower() -> None:
    counter = TripCounter()
    counter.observe(report("a", 0, seq=0, sent_at=10.0))
    counter.observe(report("a", 1, seq=3, sent_at=20.0))
    counter.observe(report("a", 2, seq=2, sent_at=40.0))  # a new life that tripped twice before it was heard
    assert total(counter) == 3


def test_a_late_report_of_an_earlier_session_is_not_a_restart() -> None:
    counter = TripCounter()
    counter.observe(report("a", 0, seq=0, sent_at=10.0))
    counter.observe(report("a", 3, seq=9, sent_at=50.0))
    counter.observe(report("a", 2, seq=8, sent_at=45.0))  # sent before the last one, arrived after it
    assert total(counter) == 3
    counter.observe(report("a", 3, seq=10, sent_at=55.0))
    assert total(counter) == 3


def test_a_breaker_whose_counter_went_down_counts_again_from_zero() -> None:
    counter = TripCounter()
    counter.observe(report("a", 0, seq=0))
    counter.observe(report("a", 3, seq=1))
    counter.observe(report("a", 1, seq=2))  # the same sidecar, one breaker started again
    assert total(counter) == 4


def test_a_deleted_pod_keeps_its_trips_and_a_report_it_sent_before_is_not_counted_again() -> None:
    counter = TripCounter()
    counter.observe(report("a", 0, seq=0))
    counter.observe(report("a", 2, seq=1))
    counter.observe(report("b", 0, seq=0))
    counter.forget_pod("shop", "a", now=1000.0)
    assert total(counter) == 2  # was 0 once the pod was gone, when trips summed the live counters
    counter.observe(report("a", 2, seq=2))  # relayed late, after the pod was deleted
    counter.observe(report("b", 1, seq=1))
    assert total(counter) == 3


def test_a_pod_recreated_under_the_same_name_is_a_new_life() -> None:
    counter = TripCounter()
    counter.observe(report("db-0", 0, seq=0, uid="first"))
    counter.observe(report("db-0", 2, seq=5, uid="first"))
    counter.forget_pod("shop", "db-0", now=1000.0)
    counter.observe(report("db-0", 1, seq=9, uid="second"))  # a StatefulSet's pod, created again
    assert total(counter) == 3


def test_the_record_of_a_deleted_pod_is_dropped_after_a_while() -> None:
    counter = TripCounter()
    counter.observe(report("a", 1, seq=0))
    counter.forget_pod("shop", "a", now=1000.0)
    counter.forget_pod("shop", "other", now=1000.0 + RETAIN_GONE_SECONDS + 1)
    assert ("shop", "a") not in counter.pods
    assert total(counter) == 1


def test_a_new_leader_starts_from_the_written_trips_and_does_not_count_live_counters_again() -> None:
    # The last leader wrote 5: pod a's 2 and pod b's 1 trips, and 2 of a pod that is gone since.
    counter = TripCounter()  # the new term
    counter.observe(report("a", 2, seq=40))
    counter.observe(report("b", 1, seq=41))
    assert total(counter, stored=5) == 5
    counter.observe(report("a", 3, seq=42))  # a trip after the first report of this term
    assert total(counter, stored=99) == 6  # the floor is read once per term: later writes are our own
    counter.observe(report("b", 0, seq=0, sent_at=500.0))  # b's sidecar restarted
    counter.observe(report("b", 1, seq=1, sent_at=505.0))
    assert total(counter) == 7


def test_a_new_leader_takes_the_live_counters_when_they_exceed_what_was_written() -> None:
    counter = TripCounter()
    counter.observe(report("a", 3, seq=40))  # a tripped once more just before the last leader stopped
    counter.observe(report("b", 2, seq=41))
    assert total(counter, stored=4) == 5


def test_a_recreated_policy_counts_from_zero_and_ignores_what_the_old_one_wrote() -> None:
    counter = TripCounter()
    counter.observe(report("a", 4, seq=1))
    assert total(counter, stored=10) == 10
    # Deleted and created again under the same name; the pod keeps its breaker and its counter.
    assert total(counter, stored=0, uid="uid-2") == 0
    counter.observe(report("a", 5, seq=2))
    assert total(counter, uid="uid-2") == 1


def test_a_policy_deleted_and_created_again_counts_only_new_trips() -> None:
    counter = TripCounter()
    counter.observe(report("a", 0, seq=0))
    counter.observe(report("a", 4, seq=1))
    assert total(counter) == 4
    counter.forget_policy(POLICY)
    counter.observe(report("a", 4, seq=2))  # the Disabled breaker it keeps, reported again
    assert total(counter, uid="uid-2") == 0


def test_an_upstream_removed_from_the_spec_counts_from_zero_when_it_comes_back() -> None:
    counter = TripCounter()
    counter.observe(report("a", 3, seq=1))
    assert total(counter, stored=3) == 3
    assert counter.totals(POLICY, UID, ["ledger"], {}) == {"ledger": 0}  # payments gone from the spec
    counter.observe(report("a", 3, seq=2))
    counter.observe(report("a", 4, seq=3))
    assert total(counter, stored=3) == 1  # back: the written 3 was the upstream's that went away


def test_observe_mode_trips_count_like_enforced_ones() -> None:
    counter = TripCounter()
    counter.observe(report("a", 0, seq=0, mode="Observe"))
    counter.observe(report("a", 2, seq=1, mode="Observe"))
    assert total(counter) == 2


# -- a fleet over time: pods trip, restart, go away; leaders change --------------------------------


@dataclass
class Sidecar:
    uid: str
    seq: int = 0
    trips: int = 0


@dataclass
class World:
    clock: float = 0.0
    sidecars: dict[str, Sidecar] = field(default_factory=dict)
    made: int = 0  # trips the breakers made (each reported at once, as sidecars do on a transition)
    created: int = 0

    def send(self, counter: TripCounter, pod: str) -> None:
        sidecar = self.sidecars[pod]
        self.clock += 1.0
        counter.observe(report(pod, sidecar.trips, seq=sidecar.seq, sent_at=self.clock, uid=sidecar.uid))
        sidecar.seq += 1


EVENTS = st.lists(
    st.tuples(
        st.sampled_from(["trip", "restart", "delete", "create", "leader", "report"]), st.integers(0, 3)
    ),
    max_size=60,
)


@settings(max_examples=300, deadline=None)
@given(EVENTS)
def test_trips_never_go_down_never_count_twice_and_are_exact_within_one_term(
    events: list[tuple[str, int]],
) -> None:
    world = World()
    counter = TripCounter()
    written = 0
    leader_changed = False
    for kind, n in events:
        pods = sorted(world.sidecars)
        pod = pods[n % len(pods)] if pods else None
        if kind == "create" or pod is None:
            world.created += 1
            name = f"p{n}" if f"p{n}" not in world.sidecars else f"p{world.created}x"
            world.sidecars[name] = Sidecar(uid=f"u{world.created}")
            world.send(counter, name)
        elif kind == "trip":
            world.sidecars[pod].trips += 1
            world.made += 1
            world.send(counter, pod)
        elif kind == "restart":
            world.sidecars[pod] = Sidecar(uid=world.sidecars[pod].uid)
            world.send(counter, pod)
        elif kind == "delete":
            del world.sidecars[pod]
            counter.forget_pod("shop", pod, now=world.clock)
        elif kind == "leader":
            counter, leader_changed = TripCounter(), True
            for name in sorted(world.sidecars):
                world.send(counter, name)
        else:
            world.send(counter, pod)
        now = total(counter, stored=written)
        assert now >= written, "trips went down"
        assert now <= world.made, "a trip was counted twice"
        written = now
        if not leader_changed:
            assert now == world.made
