"""Properties of the tuner over any history: bounds, hysteresis, freeze, minimum volume, determinism."""

from __future__ import annotations

import itertools

import hypothesis.strategies as st
from hypothesis import HealthCheck, given, settings

from breakwater.adaptive.history import LATENCY_BINS
from breakwater.adaptive.shapes import Minute, Run, run
from breakwater.api.adaptive import Threshold

from .conftest import settings_and_params

BOUNDS = {
    Threshold.CONSECUTIVE_FAILURES: (4, 12),
    Threshold.FAILURE_RATE_PERCENT: (25, 60),
    Threshold.SLOW_CALL_DURATION: (0.2, 1.5),
    Threshold.OPEN_DURATION: (20, 120),
    Threshold.OPEN_MAX_DURATION: (20, 120),  # the same bounds, and never above the spec's maxDuration
    Threshold.SUCCESSES_TO_CLOSE: (1, 3),  # at most the spec's halfOpen.successesToClose (3 of 3)
}
ADAPTIVE = {
    "historyWindow": "30m",
    "hysteresis": "3m",
    "minimumVolume": 500,
    "bounds": {
        "consecutiveFailures": {"min": 4, "max": 12},
        "failureRatePercent": {"min": 25, "max": 60},
        "slowCallDuration": {"min": "200ms", "max": "1500ms"},
        "openDuration": {"min": "20s", "max": "2m"},
    },
}


@st.composite
def minutes(draw: st.DrawFn, max_calls: int = 2000) -> Minute:
    calls = draw(st.integers(0, max_calls))
    failures = draw(st.integers(0, calls))
    latency = draw(st.lists(st.integers(0, 400), min_size=LATENCY_BINS, max_size=LATENCY_BINS))
    is_open = draw(st.booleans()) if failures * 2 > calls else False
    ended = draw(st.none() | st.floats(1, 3600))
    return Minute(calls, failures, tuple(latency), open=is_open, outage_ended=ended)


histories = st.lists(minutes(), min_size=1, max_size=90)


def tuned(history: list[Minute]) -> Run:
    breaker, params = settings_and_params(ADAPTIVE)
    return run(history, breaker, params)


FAST = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@FAST
@given(histories)
def test_tuned_thresholds_always_stay_within_the_bounds(history: list[Minute]) -> None:
    result = tuned(history)
    for _, change in result.changes:
        low, high = BOUNDS[change.threshold]
        assert low <= change.after <= high
    for threshold, track in result.state.tracks.items():
        if track.tuned:
            assert BOUNDS[threshold][0] <= track.value <= BOUNDS[threshold][1]


@FAST
@given(histories)
def test_at_most_one_change_per_threshold_per_hysteresis_period(history: list[Minute]) -> None:
    result = tuned(history)
    for threshold in Threshold:
        times = [t for t, c in result.changes if c.threshold is threshold]
        assert all(later - earlier >= 180 for earlier, later in itertools.pairwise(times))


@FAST
@given(histories)
def test_nothing_changes_while_a_pod_is_open_or_half_open(history: list[Minute]) -> None:
    result = tuned(history)
    frozen = {t for t, f in zip(result.times, result.frozen, strict=True) if f}
    assert not [t for t, _ in result.changes if t in frozen]


@FAST
@given(st.lists(minutes(max_calls=15), min_size=1, max_size=30))
def test_nothing_changes_under_the_minimum_volume(history: list[Minute]) -> None:
    assert sum(m.calls for m in history) < 500
    assert tuned(history).changes == []


@FAST
@given(histories)
def test_the_same_history_gives_the_same_thresholds(history: list[Minute]) -> None:
    first, second = tuned(history), tuned(history)
    assert first.values == second.values
    assert [(t, c.threshold, c.after) for t, c in first.changes] == [
        (t, c.threshold, c.after) for t, c in second.changes
    ]
