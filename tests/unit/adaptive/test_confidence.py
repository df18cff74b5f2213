"""The tuner keeps a threshold the evidence does not rule out: how sure it is scales with the volume."""

from __future__ import annotations

import random

import pytest

from breakwater.adaptive import tuner
from breakwater.adaptive.shapes import Minute, Run, _latency, run
from breakwater.adaptive.tuner import Configured, Evidence, TunerState, step, targets
from breakwater.api.adaptive import Threshold

from .conftest import settings_and_params

CF = Threshold.CONSECUTIVE_FAILURES


def jumpy(seed: int, calls_per_minute: int, hours: int = 6) -> list[Minute]:
    """The failure rate jumps every 5 minutes to anywhere between 0 and 20 % (the replay benchmark's
    noisy upstream), at `calls_per_minute`."""
    rng = random.Random(seed)
    minutes = []
    for i in range(hours * 60):
        if i % 5 == 0:
            rate = rng.uniform(0.0, 0.2)
        failures = sum(rng.random() < rate for _ in range(calls_per_minute))
        minutes.append(Minute(calls_per_minute, failures, _latency(rng, calls_per_minute, 0.2, 0.8)))
    return minutes


def tuned(minutes: list[Minute]) -> Run:
    settings, params = settings_and_params()
    return run(minutes, settings, params)


def cf_changes(result: Run) -> list[float]:
    return [c.after for _, c in result.changes if c.threshold is CF]


def test_a_jumpy_low_traffic_upstream_keeps_its_run_length_a_busy_one_is_tuned(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # 30 calls a minute: a run of 5 failures by chance comes about once a day, give or take more than
    # the hour's 1,800 calls can pin down; without the rule the run length moved 4 to 6 times in 6 h
    for seed in (1, 2, 3):
        kept = cf_changes(tuned(jumpy(seed, 30)))
        with monkeypatch.context() as patched:
            patched.setattr(tuner, "CHANCE_RUNS_DEVIATIONS", 0.0)  # no range: the estimate alone
            unguarded = cf_changes(tuned(jumpy(seed, 30)))
        assert len(kept) <= 1 < 4 <= len(unguarded)
        # the same upstream with 20 times the calls: 20 times the chance runs, beyond doubt
        busy = tuned(jumpy(seed, 600))
        assert busy.values[CF][-1] > 5


def evidence_with(runs: tuple[float, ...], errors: tuple[float, ...]) -> Evidence:
    return Evidence(
        window_seconds=3600, calls=2000, failures=200, spread=0.05, chance_runs=runs,
        p99_seconds=None, outages=(), incidents=0, healthy_seconds=3600, chance_runs_error=errors,
    )  # fmt: skip


def test_a_run_length_is_changed_only_when_the_value_in_force_is_outside_what_the_evidence_supports() -> None:
    settings, params = settings_and_params()
    configured = Configured.of(settings, timeout_seconds=2.0)
    runs = (500.0, 80.0, 15.0, 4.0, 1.2, 0.3, 0.05)  # runs of 5 a little over once a day: target 6

    def after_an_hour(errors: tuple[float, ...]) -> float:
        state = TunerState()
        for minute in range(61):
            state, _ = step(state, evidence_with(runs, errors), configured, params, now=60.0 * minute,
                            frozen=False)  # fmt: skip
        return state.tracks[CF].value

    uncertain = tuple(0.25 * r for r in runs)  # +- 2 errors: runs of 5 at 0.6 to 1.8 a day
    assert targets(evidence_with(runs, uncertain), configured, params)[CF].supported == (5, 6)
    assert after_an_hour(uncertain) == 5
    sure = tuple(0.05 * r for r in runs)
    assert targets(evidence_with(runs, sure), configured, params)[CF].supported == (6, 6)
    assert after_an_hour(sure) == 6
    assert after_an_hour(()) == 6  # no error known (a single bucket): the estimate alone decides
