"""Replay benchmark of the tuner: default thresholds, adaptive, and the best static ones in hindsight.

For every scenario and seed of bench/adaptive/scenarios.py (fixed before the tuner was tuned), the
same per-call data is replayed through the real breaker engine (`breakwater.adaptive.replay`, the code
of `breakwater simulate`) three ways:

- default: the policy of scenarios.POLICY as written;
- adaptive: the same policy with spec.adaptive at its defaults, tuned as the operator would;
- best static: every combination of scenarios.GRID, replayed, the lowest score kept (hindsight: it
  is chosen knowing the outcome, per scenario and seed).

Each row shows the absolute counts: calls rejected while the upstream would have answered, failed
calls let through during the incidents, time to the first trip of each incident, and the score
stated in advance (scenarios.score). Writes bench/results/adaptive-replay.{md,json}.

    .venv/bin/python bench/adaptive_replay.py              # all scenarios, all seeds (~20 min on 2 cores)
    .venv/bin/python bench/adaptive_replay.py --quick      # first seed only, smaller grid
"""

from __future__ import annotations

import argparse
import itertools
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent / "adaptive"))
sys.path.insert(0, str(Path(__file__).resolve().parent / "operator"))

import scenarios as sc
from measure import machine_facts, md_table, write_results

from breakwater.adaptive.replay import Call, Incident, ReplayResult, replay
from breakwater.api.policy import parse_spec
from breakwater.api.spec import CircuitBreakerPolicySpec


def spec_of(overrides: dict[str, Any] | None = None, *, adaptive: bool) -> CircuitBreakerPolicySpec:
    body: dict[str, Any] = {
        "selector": {"matchLabels": {"app": "bench"}},
        "upstreams": [{"name": "upstream", "host": "127.0.0.1", "port": 8080, "listenPort": 15210}],
        **{k: v for k, v in sc.POLICY.items() if k != "adaptive"},
    }
    if adaptive:
        body["adaptive"] = sc.POLICY["adaptive"]
    if overrides:
        trip = body["trip"]
        body["trip"] = {
            "consecutiveFailures": overrides["consecutiveFailures"],
            "failureRate": {**trip["failureRate"], "percent": overrides["failureRatePercent"]},
            "slowCalls": {**trip["slowCalls"], "slowerThan": overrides["slowerThan"]},
        }
        body["open"] = {"duration": overrides["openDuration"]}
    return parse_spec(body)


def run(
    spec: CircuitBreakerPolicySpec, calls: list[Call], incidents: list[Incident], seed: int
) -> ReplayResult:
    settings = spec.settings_for("upstream")
    return replay(
        calls,
        settings.breaker_settings(),
        timeout_seconds=settings.timeout.seconds,
        adaptive=spec.adaptive if spec.adaptive.enabled else None,
        incidents=incidents,
        seed=seed,
    )


def summary(result: ReplayResult) -> dict[str, Any]:
    return {
        "rejected_healthy": result.rejected_healthy,
        "failed_in_incidents": result.failed_in_incidents,
        "failed_let_through": result.failed_let_through,
        "rejected_failing": result.rejected_failing,
        "trips": result.trips,
        "time_to_open": [None if t is None else round(t, 1) for t in result.time_to_open],
        "score": sc.score(result.rejected_healthy, result.failed_in_incidents),
        "changes": [
            {"at": round(at), "threshold": str(th), "value": value, "reason": why}
            for at, th, value, why in result.changes
        ],
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--quick", action="store_true", help="first seed only and a smaller grid")
    parser.add_argument("--scenario", action="append", help="only this scenario (repeatable)")
    args = parser.parse_args()
    machine = machine_facts()
    grid = dict(sc.GRID)
    if args.quick:
        grid = {k: v[:: max(1, len(v) // 2)] for k, v in grid.items()}
    combos = [dict(zip(grid, values, strict=True)) for values in itertools.product(*grid.values())]
    seeds = sc.SEEDS[:1] if args.quick else sc.SEEDS
    rows, data = [], []
    for scenario in sc.SCENARIOS:
        if args.scenario and scenario.name not in args.scenario:
            continue
        for seed in seeds:
            started = time.monotonic()
            calls, incidents = scenario.generate(seed)
            default = summary(run(spec_of(adaptive=False), calls, incidents, seed))
            adaptive = summary(run(spec_of(adaptive=True), calls, incidents, seed))
            best, best_combo = None, None
            for combo in combos:
                got = summary(run(spec_of(combo, adaptive=False), calls, incidents, seed))
                if best is None or got["score"] < best["score"]:
                    best, best_combo = got, combo
            assert best is not None
            assert best_combo is not None
            took = time.monotonic() - started
            print(f"{scenario.name} seed {seed}: {len(calls)} calls, {took:.0f} s", flush=True)
            data.append(
                {
                    "scenario": scenario.name,
                    "seed": seed,
                    "calls": len(calls),
                    "default": default,
                    "adaptive": adaptive,
                    "best_static": {**best, "thresholds": best_combo},
                }
            )
            for name, got in (("default", default), ("adaptive", adaptive), ("best static", best)):
                label = name
                if name == "best static":
                    label += " (" + ", ".join(f"{k} {v}" for k, v in best_combo.items()) + ")"
                rows.append(
                    [
                        scenario.name,
                        seed,
                        label,
                        got["rejected_healthy"],
                        got["failed_in_incidents"],
                        " / ".join("never" if t is None else f"{t:g}" for t in got["time_to_open"]),
                        got["trips"],
                        len(got.get("changes") or ()),
                        got["score"],
                    ]
                )
    verdicts = []
    for entry in data:
        a, d, b = entry["adaptive"]["score"], entry["default"]["score"], entry["best_static"]["score"]
        within = a <= 1.10 * b
        verdicts.append(
            [
                entry["scenario"],
                entry["seed"],
                d,
                a,
                b,
                f"{a / b:.2f}" if b else "-",
                "yes" if within else "no",
                "yes" if a < d else "no",
            ]
        )
    body = (
        "Score (stated in bench/adaptive/scenarios.py before the tuner was tuned; lower is better): "
        "`rejected_healthy + 2 * failed_in_incidents`.\n\n"
        + md_table(
            [
                "scenario",
                "seed",
                "thresholds",
                "rejected while healthy",
                "failed let through in incidents",
                "time to open s (per incident)",
                "trips",
                "tuner changes",
                "score",
            ],
            rows,
        )
        + "\n\nGoal: adaptive within 10 % of the hindsight-best static score, and better than the "
        "default.\n\n"
        + md_table(
            [
                "scenario",
                "seed",
                "default",
                "adaptive",
                "best static",
                "adaptive / best",
                "within 10 %",
                "better than default",
            ],
            verdicts,
        )
    )
    write_results(
        "adaptive-replay",
        title="Adaptive thresholds: replayed calls, default vs adaptive vs hindsight-best static",
        machine=machine,
        body_md=body,
        data={"policy": sc.POLICY, "grid": grid, "results": data},
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
