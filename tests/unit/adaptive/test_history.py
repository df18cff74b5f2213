"""The history ring: fixed memory, wall-clock buckets, ingestion from cumulative reports, persistence."""

from __future__ import annotations

from typing import NamedTuple

import pytest

from breakwater.adaptive.history import BUCKETS, BYTES_PER_UPSTREAM, LATENCY_BINS, History, PodCounters
from breakwater.adaptive.ingest import ingest
from breakwater.api.report import UpstreamReport
from breakwater.breaker.settings import State


class Move(NamedTuple):
    from_state: State
    to_state: State
    reason: str
    at: float


def report(calls: int, failures: int, trips: int = 0, latency: list[int] | None = None) -> UpstreamReport:
    return UpstreamReport(
        name="payments",
        state=State.CLOSED,
        calls=calls,
        failures=failures,
        trips=trips,
        latency=latency or [],
    )


def test_memory_is_fixed_whatever_the_traffic() -> None:
    history = History.for_window(3600)
    for second in range(0, 7200, 5):
        history.add(1_800_000_000 + second, calls=10_000, failures=50, latency=[1] * LATENCY_BINS)
    assert len(history.counters) * history.counters.itemsize + 8 * 4 >= BYTES_PER_UPSTREAM - 32
    assert len(history.counters) == BUCKETS * (3 + LATENCY_BINS)
    assert len(history.buckets(1_800_007_200)) == BUCKETS  # the last hour only


def test_buckets_older_than_the_window_are_dropped_not_shifted() -> None:
    history = History.for_window(600)  # 10 s buckets
    history.add(1000.0, calls=5, failures=1)
    history.add(1700.0, calls=7)
    assert [(start, b.calls) for start, b in history.buckets(1700.0)] == [(1700.0, 7)]
    history.add(1000.0, calls=100)  # too old for the ring now: ignored
    assert sum(b.calls for _, b in history.buckets(1700.0)) == 7


def test_reports_add_their_differences_and_a_restarted_sidecar_counts_from_zero() -> None:
    history, counters = History.for_window(3600), PodCounters()
    ingest(history, counters, report(1000, 10), (), at=100.0)  # the first report seen: a baseline
    ingest(history, counters, report(1100, 12), (), at=105.0)
    ingest(history, counters, report(1100, 12), (), at=110.0)
    ingest(history, counters, report(30, 3), (), at=115.0)  # restarted: its counters start again
    buckets = history.buckets(120.0)
    assert sum(b.calls for _, b in buckets) == 130
    assert sum(b.failures for _, b in buckets) == 5


def test_an_outage_lasts_until_its_last_failed_trial_and_resent_transitions_count_once() -> None:
    history, counters = History.for_window(3600), PodCounters()
    trip = Move(State.CLOSED, State.OPEN, "ConsecutiveFailures", 1000.0)
    half = Move(State.OPEN, State.HALF_OPEN, "OpenTimeoutElapsed", 1060.0)
    failed = Move(State.HALF_OPEN, State.OPEN, "TrialFailed", 1061.0)
    half_again = Move(State.OPEN, State.HALF_OPEN, "OpenTimeoutElapsed", 1181.0)
    close = Move(State.HALF_OPEN, State.CLOSED, "TrialsSucceeded", 1182.0)
    ingest(history, counters, report(10, 5, 1), [trip], at=1001.0)
    ingest(history, counters, report(10, 5, 1), [trip, half, failed], at=1062.0)  # resent with more
    ingest(history, counters, report(10, 5, 1), [failed, half_again, close], at=1183.0)
    # Still failing 61 s after the trip; the 120 s it then stayed open are the breaker's, not the outage's.
    assert history.recent_outages() == (61.0,)
    ingest(
        history, counters, report(10, 5, 2), [Move(State.CLOSED, State.OPEN, "FailureRate", 2000.0)], at=2001
    )
    ingest(
        history, counters, report(10, 5, 2), [half._replace(at=2060.0), close._replace(at=2061.0)], at=2062
    )
    assert history.recent_outages() == (61.0, 0.0)  # over before the first trial


def test_pods_open_at_once_saw_one_outage_from_the_first_trip_to_the_last_failed_trial() -> None:
    history = History.for_window(3600)
    views = {  # pod: (tripped, its last failed trial or None, closed)
        "a": (1000.0, 1060.0, 1181.0),
        "b": (1002.0, None, 1063.0),  # its first trial succeeded
        "c": (1005.0, 1120.0, 1241.0),
    }
    for tripped, failed, closed in views.values():
        moves = [Move(State.CLOSED, State.OPEN, "ConsecutiveFailures", tripped)]
        if failed is not None:
            moves += [
                Move(State.OPEN, State.HALF_OPEN, "OpenTimeoutElapsed", failed - 1),
                Move(State.HALF_OPEN, State.OPEN, "TrialFailed", failed),
            ]
        moves += [
            Move(State.OPEN, State.HALF_OPEN, "OpenTimeoutElapsed", closed - 1),
            Move(State.HALF_OPEN, State.CLOSED, "TrialsSucceeded", closed),
        ]
        counters = PodCounters()
        ingest(history, counters, report(10, 5, 1), moves, at=closed + 1)
    # One outage (not three): the upstream was seen failing from 1000 to 1120.
    assert history.recent_outages() == (120.0,)
    counters = PodCounters()
    later = [
        Move(State.CLOSED, State.OPEN, "FailureRate", 2000.0),
        Move(State.OPEN, State.HALF_OPEN, "OpenTimeoutElapsed", 2060.0),
        Move(State.HALF_OPEN, State.CLOSED, "TrialsSucceeded", 2061.0),
    ]
    ingest(history, counters, report(10, 5, 1), later, at=2062.0)
    assert history.recent_outages() == (120.0, 0.0)  # after the first had closed everywhere: another


def test_a_forced_open_is_not_an_outage() -> None:
    history, counters = History.for_window(3600), PodCounters()
    ingest(history, counters, report(0, 0), [Move(State.CLOSED, State.OPEN, "ModeChanged", 10.0)], at=11.0)
    ingest(history, counters, report(0, 0), [Move(State.OPEN, State.CLOSED, "ModeChanged", 99.0)], at=99.0)
    assert history.recent_outages() == ()


def test_the_encoded_history_is_compact_and_decodes_to_the_same_buckets() -> None:
    history = History.for_window(3600)
    for minute in range(90):
        history.add(1_800_000_000 + 60 * minute, calls=600, failures=12, latency=[0, 0, 5, 300, 295])
    history.add_outage(42.0)
    text = history.encode()
    assert len(text) < 2000  # a 4 KB ring compresses well: mostly small repeated numbers
    back = History.decode(text)
    now = 1_800_000_000 + 60 * 90
    assert back.buckets(now) == history.buckets(now)
    assert back.recent_outages() == (42.0,)


def test_a_persisted_history_merges_with_what_reports_built_since_a_restart() -> None:
    saved, fresh = History.for_window(3600), History.for_window(3600)
    saved.add(1_800_000_000, calls=100, failures=1)
    fresh.add(1_800_000_000, calls=10)
    fresh.add(1_800_000_060, calls=20)
    merged = saved.merged(fresh)
    assert [b.calls for _, b in merged.buckets(1_800_000_100)] == [110, 20]


@pytest.mark.parametrize("text", ["", "not base64!", "aGVsbG8="])
def test_a_damaged_record_is_refused_not_half_read(text: str) -> None:
    with pytest.raises(ValueError, match="history"):
        History.decode(text)
