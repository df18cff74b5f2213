"""Plots for docs/adaptive.md: the tuner over the six synthetic histories of `breakwater.adaptive.shapes`.

    .venv/bin/pip install -r bench/requirements.txt   # matplotlib
    .venv/bin/python hack/plot_adaptive.py            # writes docs/img/adaptive-*.png

The same shapes, seed and policy as tests/unit/adaptive/test_shapes.py: every trip rule on at the
spec's defaults (consecutiveFailures 5, failureRate 50 %, slowCalls slower than 1s), spec.adaptive at
its defaults.
"""

from __future__ import annotations

import random
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt

from breakwater.adaptive.shapes import SHAPES, Minute, Run, run
from breakwater.adaptive.tuner import _p99
from breakwater.api.adaptive import Threshold
from breakwater.api.policy import parse_spec

IMG = Path(__file__).resolve().parents[1] / "docs" / "img"
SPEC = parse_spec(
    {
        "selector": {"matchLabels": {"app": "checkout"}},
        "upstreams": [{"name": "payments", "host": "127.0.0.1", "port": 8080, "listenPort": 15210}],
        "trip": {
            "consecutiveFailures": 5,
            "failureRate": {"percent": 50},
            "slowCalls": {"percent": 80, "slowerThan": "1s"},
        },
        "adaptive": {"enabled": True},
    }
)


def _shade(ax: plt.Axes, result: Run) -> None:
    hours = [t / 3600 for t in result.times]
    for i, frozen in enumerate(result.frozen):
        if frozen:
            ax.axvspan(hours[i] - 0.5 / 60, hours[i], color="red", alpha=0.15, lw=0)


def main() -> None:
    IMG.mkdir(parents=True, exist_ok=True)
    settings = SPEC.settings_for("payments").breaker_settings()
    runs: dict[str, tuple[list[Minute], Run]] = {}
    for name, make in SHAPES.items():
        minutes = make(random.Random(1))
        runs[name] = (minutes, run(minutes, settings, SPEC.adaptive))

    fig, axes = plt.subplots(3, 2, figsize=(12, 10), sharex=True)
    for ax, (name, (minutes, result)) in zip(axes.flat, runs.items(), strict=True):
        hours = [t / 3600 for t in result.times]
        ax.plot(
            [i / 60 for i in range(len(minutes))],
            [100 * m.failures / m.calls if m.calls else 0 for m in minutes],
            color="grey",
            lw=0.6,
            label="failure rate per minute, %",
        )
        ax.step(
            hours,
            result.values[Threshold.FAILURE_RATE_PERCENT],
            where="post",
            color="tab:blue",
            lw=1.8,
            label="trip.failureRate.percent",
        )
        ax.set_ylim(0, 60)
        twin = ax.twinx()
        twin.step(
            hours,
            result.values[Threshold.CONSECUTIVE_FAILURES],
            where="post",
            color="tab:orange",
            lw=1.5,
            label="trip.consecutiveFailures",
        )
        twin.set_ylim(0, 22)
        _shade(ax, result)
        ax.set_title(name)
        if ax is axes.flat[0]:
            ax.legend(loc="upper left", fontsize=8)
            twin.legend(loc="upper right", fontsize=8)
    for ax in axes[-1]:
        ax.set_xlabel("hours (red: frozen, a breaker open)")
    fig.suptitle("Failure-rate and consecutive-failure thresholds the tuner chose (spec.adaptive defaults)")
    fig.tight_layout()
    fig.savefig(IMG / "adaptive-failures.png", dpi=90)

    fig, axes = plt.subplots(3, 2, figsize=(12, 10), sharex=True)
    for ax, (name, (minutes, result)) in zip(axes.flat, runs.items(), strict=True):
        hours = [t / 3600 for t in result.times]
        p99 = [_p99(list(m.latency)) for m in minutes]
        ax.plot(
            [i / 60 for i in range(len(minutes))],
            [1000 * (p or 0) for p in p99],
            color="grey",
            lw=0.6,
            label="latency p99 per minute, ms",
        )
        ax.step(
            hours,
            [1000 * v for v in result.values[Threshold.SLOW_CALL_DURATION]],
            where="post",
            color="tab:green",
            lw=1.8,
            label="trip.slowCalls.slowerThan, ms",
        )
        for threshold, lw, ls, label in (
            (Threshold.OPEN_DURATION, 1.2, "--", "open.duration, s x 10"),
            (Threshold.OPEN_MAX_DURATION, 0.8, ":", "open.maxDuration, s x 10"),
        ):
            ax.step(
                hours,
                [10 * v for v in result.values[threshold]],
                where="post",
                color="tab:purple",
                lw=lw,
                ls=ls,
                label=label,
            )
        ax.set_ylim(0, 3200)
        _shade(ax, result)
        ax.set_title(name)
        if ax is axes.flat[0]:
            ax.legend(loc="upper left", fontsize=8)
    for ax in axes[-1]:
        ax.set_xlabel("hours (red: frozen, a breaker open)")
    fig.suptitle("Slow-call duration and open periods the tuner chose (spec.adaptive defaults)")
    fig.tight_layout()
    fig.savefig(IMG / "adaptive-latency.png", dpi=90)
    print(f"wrote {IMG / 'adaptive-failures.png'} and {IMG / 'adaptive-latency.png'}")


if __name__ == "__main__":
    main()
