"""Replay benchmark of the tuner: default thresholds, adaptive, and the best static ones in hindsight.

For every scenario and seed of bench/adaptive/scenarios.py (fixed before the tuner was tuned), the
same per-call data is replayed through the real breaker engine (`breakwater.adaptive.replay`, the code
of `breakwater simulate`) three ways:

- default: the policy of scenarios.POLICY as written;
- adaptive: the same policy with spec.adaptive at its defaults, tuned as the operator would;
- best static: every combination of scenarios.GRID, replayed, the lowest score kept (hindsight: it
  is chosen knowing the outcome, per scenario and seed); and, from the same replays, the one
  combination with the lowest total over a scenario's seeds (hindsight per scenario: what a team
  that tried every combination on a scenario's history would have picked for it).

Each row shows the absolute counts: calls rejected while the upstream would have answered, failed
calls let through during the incidents, time to the first trip of each incident, and the score
stated in advance (scenarios.score). Writes bench/results/adaptive-replay.{md,json}.

    .venv/bin/python bench/adaptive_replay.py              # all scenarios, all seeds (~20 min on 2 cores)
    .venv/bin/python bench/adaptive_replay.py --quick      # first seed only, smaller grid
    .venv/bin/python bench/adaptive_replay.py --reuse bench/results/adaptive-replay.json [--scenario S]

`--reuse` replays only the adaptive run and takes the default and best-static rows from an earlier
full run: they do not depend on the tuner (the same engine, scenarios and seeds give the same rows),
so a tuner change is measured in about 15 s per scenario-seed instead of 8 minutes. It writes
bench/results/adaptive-replay-tuner.{md,json}, never the full run's files; `--quick` or `--scenario`
without `--reuse` write adaptive-replay-partial.{md,json}.
"""

from __future__ import annotations

import argparse
import itertools
import json
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


HEADERS_PER_SCENARIO = [
    "scenario", "seeds", "default", "adaptive", "best static for the scenario", "adaptive / best",
    "within 10 %", "better than default",
]  # fmt: skip


def per_scenario_table(data: list[dict[str, Any]], combos: list[dict[str, Any]]) -> str:
    """Totals over each scenario's seeds: default, adaptive, and the one grid combination with the lowest
    total (hindsight per scenario). Empty unless every seed of a scenario has its grid scores."""
    rows = []
    for scenario in dict.fromkeys(e["scenario"] for e in data):
        entries = [e for e in data if e["scenario"] == scenario]
        if not all(len(e.get("grid_scores", ())) == len(combos) for e in entries):
            continue
        totals = [sum(e["grid_scores"][i] for e in entries) for i in range(len(combos))]
        best = min(range(len(combos)), key=totals.__getitem__)
        a = sum(e["adaptive"]["score"] for e in entries)
        d = sum(e["default"]["score"] for e in entries)
        b = totals[best]
        combo = ", ".join(f"{k} {v}" for k, v in combos[best].items())
        rows.append(
            [scenario, len(entries), d, a, f"{b} ({combo})", f"{a / b:.2f}" if b else "-",
             "yes" if a <= 1.10 * b else "no", "yes" if a < d else "no"]
        )  # fmt: skip
    if not rows:
        return ""
    return (
        "\n\nThe same goal per scenario: scores summed over its seeds, against the one static combination "
        "of the grid with the lowest sum (chosen in hindsight for the scenario, not for each seed).\n\n"
        + str(md_table(HEADERS_PER_SCENARIO, rows))
    )


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--quick", action="store_true", help="first seed only and a smaller grid")
    parser.add_argument("--scenario", action="append", help="only this scenario (repeatable)")
    parser.add_argument("--reuse", type=Path, help="default and best-static rows from this earlier result")
    args = parser.parse_args()
    reused: dict[tuple[str, int], dict[str, Any]] = {}
    if args.reuse:
        earlier = json.loads(args.reuse.read_text())
        reused = {(e["scenario"], e["seed"]): e for e in earlier["results"]}
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
            adaptive = summary(run(spec_of(adaptive=True), calls, incidents, seed))
            best, best_combo = None, None
            grid_scores: list[int] = []
            if args.reuse:
                earlier_entry = reused[(scenario.name, seed)]
                if earlier_entry["calls"] != len(calls):
                    sys.exit(f"{args.reuse}: {scenario.name} seed {seed} had other calls: run it in full")
                default = earlier_entry["default"]
                best_combo = earlier_entry["best_static"]["thresholds"]
                best = {k: v for k, v in earlier_entry["best_static"].items() if k != "thresholds"}
                grid_scores = earlier_entry.get("grid_scores", [])
            else:
                default = summary(run(spec_of(adaptive=False), calls, incidents, seed))
            for combo in [] if args.reuse else combos:
                got = summary(run(spec_of(combo, adaptive=False), calls, incidents, seed))
                grid_scores.append(got["score"])
                if best is None or got["score"] < best["score"]:
                    best, best_combo = got, combo
            assert best is not None
            assert best_combo is not None
            took = time.monotonic() - started
            print(f"{scenario.name} seed {seed}: {len(calls)} calls, {took:.0f} s", flush=True)
            # How much of a seed's hindsight-best is that seed's luck: the other seeds' best thresholds here.
            others = {
                other: summary(
                    run(spec_of(e["best_static"]["thresholds"], adaptive=False), calls, incidents, seed)
                )["score"]
                for (name, other), e in sorted(reused.items())
                if name == scenario.name and other != seed
            }
            data.append(
                {
                    "scenario": scenario.name,
                    "seed": seed,
                    "calls": len(calls),
                    "default": default,
                    "adaptive": adaptive,
                    "best_static": {**best, "thresholds": best_combo},
                    **({"other_seeds_best_static": others} if others else {}),
                    **({"grid_scores": grid_scores} if grid_scores else {}),
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
    source = ""
    if args.reuse:
        source = (
            f"Default and best-static rows from `{args.reuse}` (commit {earlier['machine']['commit']}); "
            "only the adaptive rows were replayed.\n\n"
        )
    body = (
        source + "Score (stated in bench/adaptive/scenarios.py before the tuner was tuned; lower is better): "
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
    if args.reuse:
        body += (
            "\n\nThe best static thresholds of each seed (hindsight, per seed) replayed on the other seeds "
            "of the scenario: the score there, and that score over the seed's own best.\n\n"
            + md_table(
                [
                    "scenario",
                    "seed",
                    "own best static",
                    "adaptive",
                    "best static of seed k, here (x own best)",
                ],
                [
                    [
                        e["scenario"],
                        e["seed"],
                        e["best_static"]["score"],
                        e["adaptive"]["score"],
                        ", ".join(
                            f"seed {k}: {v} ({v / e['best_static']['score']:.2f}x)"
                            for k, v in e["other_seeds_best_static"].items()
                        ),
                    ]
                    for e in data
                    if e.get("other_seeds_best_static")
                ],
            )
        )
    body += per_scenario_table(data, combos)
    if args.reuse:
        name = "adaptive-replay-tuner"
    elif args.quick or args.scenario:
        name = "adaptive-replay-partial"  # a subset never overwrites the full run's record
    else:
        name = "adaptive-replay"
    write_results(
        name,
        title="Adaptive thresholds: replayed calls, default vs adaptive vs hindsight-best static",
        machine=machine,
        body_md=body,
        data={"policy": sc.POLICY, "grid": grid, "results": data},
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
