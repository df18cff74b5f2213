"""The tuner on six synthetic histories: what a team would expect each to do to its thresholds."""

from __future__ import annotations

import itertools
import random
from dataclasses import replace

import pytest

from breakwater.adaptive import open_periods as pricing
from breakwater.adaptive.history import History
from breakwater.adaptive.shapes import SHAPES, Run, run
from breakwater.adaptive.tuner import (
    Configured,
    Evidence,
    Track,
    TunerState,
    evidence,
    targets,
    tuned_settings,
)
from breakwater.api.adaptive import Threshold

from .conftest import settings_and_params

CF, FR, SLOW, OPEN, CEILING, TRIALS = (
    Threshold.CONSECUTIVE_FAILURES,
    Threshold.FAILURE_RATE_PERCENT,
    Threshold.SLOW_CALL_DURATION,
    Threshold.OPEN_DURATION,
    Threshold.OPEN_MAX_DURATION,
    Threshold.SUCCESSES_TO_CLOSE,
)


def tuned(shape: str, seed: int = 1, **adaptive: object) -> Run:
    settings, params = settings_and_params(dict(adaptive))
    return run(SHAPES[shape](random.Random(seed)), settings, params)


def last(result: Run, threshold: Threshold) -> float:
    return result.values[threshold][-1]


def at_hour(result: Run, threshold: Threshold, hour: float) -> float:
    index = max(i for i, t in enumerate(result.times) if t <= hour * 3600)
    return result.values[threshold][index]


def test_steady_traffic_settles_the_failure_rate_near_its_baseline_and_then_holds_still() -> None:
    result = tuned("steady")
    assert 20 <= last(result, FR) <= 30  # 2 % baseline + spread + 10 points, not the configured 50
    late = [c for t, c in result.changes if t > 3 * 3600]
    assert [c for c in late if c.threshold in (CF, FR)] == [], "a steady upstream must hold still"
    assert len(late) <= 1  # the latency p99 sits near a histogram bound: one late step of slowerThan
    assert last(result, OPEN) == 60  # no outage: nothing to learn the open duration from


def test_a_noisy_upstream_gets_a_higher_trip_point_than_a_steady_one() -> None:
    assert last(tuned("noisy"), FR) > last(tuned("steady"), FR)
    assert last(tuned("noisy"), CF) > last(tuned("steady"), CF)


def test_a_slow_drift_is_followed_up_in_small_steps_never_faster_than_the_hysteresis() -> None:
    result = tuned("slow-drift")
    assert at_hour(result, FR, 2) < last(result, FR)
    assert at_hour(result, SLOW, 1) < last(result, SLOW) <= 1.8  # below 0.9 x the 2 s timeout
    for threshold in Threshold:
        times = [t for t, c in result.changes if c.threshold is threshold]
        assert all(b - a >= 600 for a, b in itertools.pairwise(times))


def test_a_step_change_moves_the_thresholds_only_after_the_hysteresis() -> None:
    result = tuned("step-change")
    step_at = 3 * 3600
    before = at_hour(result, FR, 3)
    assert at_hour(result, FR, 3 + 9 / 60) == before, "moved within 10 min of the step"
    assert last(result, FR) > before + 5
    assert any(t > step_at for t, c in result.changes if c.threshold is FR)


def test_an_outage_freezes_the_tuner_and_does_not_teach_it_to_tolerate_outages() -> None:
    outage, steady = tuned("outage"), tuned("steady")
    frozen_times = {t for t, f in zip(outage.times, outage.frozen, strict=True) if f}
    assert frozen_times
    assert not [t for t, _ in outage.changes if t in frozen_times]
    assert abs(last(outage, FR) - last(steady, FR)) <= 2  # the outage minutes are left out
    assert last(outage, CF) == last(steady, CF)
    # 10-minute outages at 1 call/s per pod: a failed trial a minute costs less than a recovered
    # upstream waiting out a backed-off period of up to the spec's 5m
    assert last(outage, OPEN) <= last(outage, CEILING) < 300
    assert (last(steady, OPEN), last(steady, CEILING)) == (60, 300)  # no outage, nothing learnt


def test_under_the_minimum_volume_nothing_changes_and_the_reason_says_why() -> None:
    result = tuned("low-traffic")
    assert result.changes == []
    assert {last(result, t) for t in (CF, FR)} == {5, 50}
    assert all("low volume" in track.reason for track in result.state.tracks.values())


def test_low_traffic_is_tuned_once_the_minimum_volume_is_lowered_to_what_it_has() -> None:
    assert tuned("low-traffic", minimumVolume=100).changes


def test_pinned_thresholds_keep_their_configured_values() -> None:
    result = tuned("noisy", pinned=["ConsecutiveFailures", "FailureRatePercent"])
    assert last(result, CF) == 5
    assert last(result, FR) == 50
    assert {c.threshold for _, c in result.changes} <= {SLOW, OPEN, TRIALS}


def test_a_rule_the_spec_leaves_off_is_never_switched_on() -> None:
    settings, params = settings_and_params(trip={"consecutiveFailures": 5})
    result = run(SHAPES["noisy"](random.Random(1)), settings, params)
    assert set(result.values) == {CF, OPEN, CEILING, TRIALS}  # no failure-rate or slow-call rule appears


@pytest.mark.parametrize("shape", sorted(SHAPES))
def test_every_shape_stays_within_the_default_bounds(shape: str) -> None:
    result = tuned(shape)
    default_bounds = {
        CF: (3, 20),
        FR: (20, 80),
        SLOW: (0.05, 10),
        OPEN: (10, 300),
        CEILING: (10, 300),
        TRIALS: (1, 3),
    }
    for _, change in result.changes:
        bounds = default_bounds[change.threshold]
        assert bounds[0] <= change.after <= bounds[1]


def open_periods(
    *outages: float, calls_per_pod: float = 1.0, **adaptive: object
) -> tuple[float, float, tuple[float, float]]:
    """open.duration, open.maxDuration and the ceilings kept, for these outages (10 pods, 1 h)."""
    settings, params = settings_and_params(
        {"bounds": {"openDuration": {"min": "5s", "max": "5m"}}, **adaptive}
    )
    configured = Configured.of(settings, timeout_seconds=2.0)
    ev = Evidence(
        window_seconds=3600, calls=round(calls_per_pod * 10 * 3600), failures=100, spread=0.0,
        chance_runs=(0.0,), p99_seconds=0.2, outages=outages, incidents=0, healthy_seconds=3600, pods=10,
    )  # fmt: skip
    wanted = targets(ev, configured, params)
    ceiling = wanted[CEILING]
    assert ceiling.supported is not None
    return wanted[OPEN].value, ceiling.value, ceiling.supported


def test_chance_trips_shorten_the_open_duration_and_leave_the_ceiling_where_it_is() -> None:
    opening, _, kept = open_periods(0.0, 0.0, 0.0)  # every first trial succeeded
    assert opening == 5  # the bound: each second open rejected calls that would have worked
    assert kept == (5, 300)  # the ceiling never came into play: any value in force is kept


def test_long_outages_back_off_further_where_calls_are_few_and_failed_trials_dear() -> None:
    busy = open_periods(600.0, 900.0, calls_per_pod=2.0)[1]
    quiet = open_periods(600.0, 900.0, calls_per_pod=0.1)[1]
    assert busy < quiet  # a recovered upstream behind many calls should not wait minutes
    assert (
        open_periods(600.0, 900.0, calls_per_pod=0.5, failedCallCost=20)[1]
        >= open_periods(600.0, 900.0, calls_per_pod=0.5, failedCallCost=0.5)[1]
    )


def test_chance_runs_are_not_overstated_by_the_sampling_noise_of_small_buckets() -> None:
    # 30 calls a minute at a steady 10 % failures: the failures per minute vary by chance alone; the
    # runs at each minute's observed rate, (1 - f/n) (f/n)^k, came out ~6x too many at k = 5
    true_runs = 30 * 60 * 24 * 0.9 * 0.1**5  # a day of calls x the chance of a success + 5 failures
    found = []
    for seed in range(20):
        rng, history = random.Random(seed), History.for_window(3600)
        for minute in range(60):
            history.add(60.0 * minute, calls=30, failures=sum(rng.random() < 0.1 for _ in range(30)))
        found.append(evidence(history, now=3599.0).chance_runs[4])
    assert sum(found) / len(found) == pytest.approx(true_runs, rel=0.3)


@pytest.mark.parametrize(
    ("calls", "width", "rate"),
    [(18, 1.0, 0.1), (10, 1.0, 0.1), (5, 1.0, 0.2), (30, 60.0, 0.1)],
    ids=["18-a-second", "10-a-second", "5-a-second-at-20%", "30-a-minute"],
)
def test_the_run_length_picked_is_the_one_chance_makes_less_than_once_a_day(
    calls: int, width: float, rate: float
) -> None:
    # Small buckets at a steady rate: a bucket's own counts mostly show no long run at all, which
    # once put consecutiveFailures one or two below what chance really produces (trips by chance).
    settings, params = settings_and_params(
        {"bounds": {"consecutiveFailures": {"min": 1, "max": 40}}}, trip={"consecutiveFailures": 5}
    )
    configured = Configured.of(settings, timeout_seconds=2.0)
    per_day = calls * 86_400 / width
    true_k = next(k for k in range(1, 40) if per_day * (1 - rate) * rate**k < 1)
    picked = []
    for seed in range(40):
        rng, history = random.Random(seed), History(width=width)
        for i in range(60):
            history.add(width * i, calls=calls, failures=sum(rng.random() < rate for _ in range(calls)))
        picked.append(targets(evidence(history, now=60 * width - 1e-3), configured, params)[CF][0])
    assert sorted(picked)[len(picked) // 2] == true_k  # the median window gets it right
    assert sum(abs(k - true_k) <= 1 for k in picked) >= 0.9 * len(picked)
    assert min(picked) >= true_k - 1  # never low enough for chance alone to trip it daily


def test_a_noisy_upstream_needs_fewer_trial_successes_to_close_a_clean_one_keeps_the_spec_s() -> None:
    # 3 of 3 trials must succeed by default: at 10 % background failures a recovered upstream fails
    # that 27 % of the time and the breaker re-opens for a backed-off period
    assert last(tuned("noisy"), TRIALS) < 3
    assert last(tuned("steady"), TRIALS) == 3  # 2 %: 3 of 3 pass 94 % of the time
    assert last(tuned("noisy", pinned=["SuccessesToClose"]), TRIALS) == 3


def _walked_cost(
    opening: float, ceiling: float, outages: list[float], per_pod: float, backoff: float
) -> float:
    """The engine's open periods walked one by one (what `pricing.cost` counts in closed form)."""
    total = 0.0
    for phase in pricing.JITTER_PHASES:
        for failing in outages:
            t, period = 0.0, opening
            while True:
                t += period * phase
                if t > failing:
                    total += per_pod * (t - failing)
                    break
                total += 2.0
                period = min(period * backoff, ceiling)
    return total / len(pricing.JITTER_PHASES)


@pytest.mark.parametrize("seed", range(20))
def test_the_open_period_price_counts_what_walking_the_periods_would(seed: int) -> None:
    rng = random.Random(seed)
    outages = [rng.choice([0.0, rng.uniform(0, 4000)]) for _ in range(rng.randint(1, 8))]
    opening = rng.choice(pricing.CANDIDATES[:8])
    ceiling = max(opening, rng.choice(pricing.CANDIDATES))
    backoff, per_pod = rng.choice([1.0, 1.5, 2.0, 3.0]), rng.uniform(0.01, 5)
    got = pricing.cost(opening, ceiling, outages, calls_per_pod=per_pod, backoff=backoff, failed_cost=2.0)
    assert got == pytest.approx(_walked_cost(opening, ceiling, outages, per_pod, backoff), rel=1e-9, abs=1e-6)


def test_a_tuned_ceiling_never_shortens_a_pinned_open_duration() -> None:
    settings, _ = settings_and_params({"pinned": ["OpenDuration"]})
    opening = replace(settings, open_seconds=120.0)
    state = TunerState({CEILING: Track(60.0, changed_at=1.0)})  # tuned below the pinned 2m
    tuned_open = tuned_settings(opening, state)
    assert (tuned_open.open_seconds, tuned_open.open_max_seconds) == (120.0, 120.0)
    state = TunerState({CEILING: Track(180.0, changed_at=1.0)})
    assert tuned_settings(opening, state).open_max_seconds == 180.0
