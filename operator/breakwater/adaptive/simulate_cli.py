"""`breakwater simulate POLICY.yaml --history FILE`: what the policy's breaker would have done.

The history is either a CSV of calls (`time,pod,duration_ms,outcome`: time in seconds or RFC 3339,
outcome `success` or `failure`), or the operator's own history, exported with

    kubectl get configmap breakwater-adaptive-history -n NAMESPACE -o json > history.json

For the operator's history (one-minute-ish buckets, not calls) the calls of each bucket are laid out
evenly in it, its failures at random places (`--seed`) and its durations drawn within the latency
histogram's bins, spread over `--pods` pods: consecutive-failure rules then see an approximation.

The calls are replayed through the real breaker engine (`adaptive.replay`, the code of the replay
benchmark): once with the thresholds as written and, when the policy enables `adaptive` (or with
`--adaptive`), once with the tuner running as the operator would. It prints trips, time open, calls
rejected that would have succeeded, failed calls let through, and the tuner's changes.
"""

from __future__ import annotations

import argparse
import csv
import json
import math
import random
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from breakwater.adaptive.history import History
from breakwater.adaptive.replay import Call, ReplayResult, replay
from breakwater.api.durations import parse_timestamp
from breakwater.api.manifests import load_documents
from breakwater.api.policy import PolicyError, is_policy_manifest, parse_spec
from breakwater.api.report import LATENCY_BOUNDS_SECONDS
from breakwater.errors import InvalidInput

__all__ = ["add_arguments", "calls_from_csv", "calls_from_history", "run"]


class HistoryError(InvalidInput):
    """A history file that cannot be read as calls."""


MAX_SPAN_SECONDS = 7 * 86400
"""The longest history replayed: the replay steps through every report interval (a week takes about
half a minute), and a stray far-off time would otherwise run for hours."""


def _pods(text: str) -> int:
    pods = int(text)
    if pods < 1:
        raise argparse.ArgumentTypeError(f"expected at least 1 pod, got {pods}")
    return pods


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("policy", metavar="POLICY.yaml", help="the CircuitBreakerPolicy manifest")
    parser.add_argument(
        "--history", required=True, metavar="FILE", help="a CSV of calls or an exported history"
    )
    parser.add_argument("--upstream", help="the upstream to replay (default: the policy's first)")
    parser.add_argument("--adaptive", action="store_true", help="also replay with tuning, even if off")
    parser.add_argument("--pods", type=_pods, default=1, help="pods to spread an exported history over")
    parser.add_argument("--seed", type=int, default=0, help="randomness of the replay (jitter, layout)")
    parser.add_argument("--json", action="store_true", help="print JSON instead of a table")


def _time(text: str) -> float:
    try:
        seconds = float(text)
    except ValueError:
        stamp = parse_timestamp(text)
        if stamp is None:
            raise HistoryError(f"{text!r} is neither seconds nor an RFC 3339 time") from None
        return stamp.timestamp()
    if not math.isfinite(seconds):
        raise HistoryError(f"time {text!r} is not a finite number of seconds")
    return seconds


def _duration(text: str) -> float:
    milliseconds = float(text)
    if not (math.isfinite(milliseconds) and milliseconds >= 0):
        raise HistoryError(f"duration_ms {text!r} is not a finite number >= 0")
    return milliseconds / 1000


def calls_from_csv(text: str) -> list[Call]:
    """Calls from `time,pod,duration_ms,outcome` rows (a header row is expected), sorted by time."""
    rows = csv.DictReader(text.splitlines())
    wanted = {"time", "pod", "duration_ms", "outcome"}
    if not wanted <= set(rows.fieldnames or ()):
        raise HistoryError(f"a CSV of calls needs the columns {', '.join(sorted(wanted))}")
    calls: list[Call] = []
    pods: dict[str, int] = {}
    for number, row in enumerate(rows, start=2):
        try:
            missing = sorted(column for column in wanted if row.get(column) is None)
            if missing:
                raise HistoryError(f"no value for {', '.join(missing)}")
            outcome = row["outcome"].strip().lower()
            if outcome not in ("success", "failure"):
                raise HistoryError(f"outcome must be success or failure, not {row['outcome']!r}")
            pod = pods.setdefault(row["pod"], len(pods))
            calls.append(Call(_time(row["time"]), pod, _duration(row["duration_ms"]), outcome == "success"))
        except (HistoryError, ValueError) as exc:
            raise HistoryError(f"line {number}: {exc}") from exc
    calls.sort(key=lambda c: c.at)
    start = calls[0].at if calls else 0.0
    span = calls[-1].at - start if calls else 0.0
    if span > MAX_SPAN_SECONDS:
        raise HistoryError(
            f"the calls span {span / 86400:,.1f} days; at most {MAX_SPAN_SECONDS // 86400} days are replayed"
        )
    return [Call(c.at - start, c.pod, c.duration, c.ok) for c in calls]


def calls_from_history(history: History, *, pods: int, seed: int) -> list[Call]:
    """Calls laid out in the buckets of an exported history (see the module docstring)."""
    rng = random.Random(seed)
    buckets = history.buckets((history.head + 1) * history.width) if history.head >= 0 else []
    if not buckets:
        return []
    origin = buckets[0][0]
    bounds = (0.0, *LATENCY_BOUNDS_SECONDS, LATENCY_BOUNDS_SECONDS[-1] * 2)
    calls: list[Call] = []
    for start, bucket in buckets:
        durations = [
            rng.uniform(bounds[i], bounds[i + 1]) for i, n in enumerate(bucket.latency) for _ in range(n)
        ]
        rng.shuffle(durations)
        failed = set(rng.sample(range(bucket.calls), min(bucket.failures, bucket.calls)))
        for i in range(bucket.calls):
            at = start - origin + history.width * (i + 0.5) / bucket.calls
            duration = durations[i] if i < len(durations) else 0.0
            calls.append(Call(at, i % max(1, pods), duration, i not in failed))
    return calls


def _exported(document: Any, policy: str, upstream: str) -> History:
    """The history of `upstream` in a ConfigMap as `kubectl get -o json` prints it; its shape checked
    at each step (a file edited by hand, or another ConfigMap)."""
    shape = "not the ConfigMap breakwater-adaptive-history as kubectl get -o json prints it"
    data = document.get("data") if isinstance(document, Mapping) else None
    if not isinstance(data, Mapping):
        raise HistoryError(f"the exported history has no data: {shape}")
    record = data.get(f"{policy}.json")
    if record is None:
        raise HistoryError(
            f"the exported history has no record of policy {policy!r} (keys: {', '.join(map(str, data))})"
        )
    if not isinstance(record, str):
        raise HistoryError(f"data.{policy}.json: expected a JSON string: {shape}")
    try:
        upstreams = json.loads(record).get("upstreams") or {}
        saved = upstreams.get(upstream)
    except (ValueError, AttributeError):
        raise HistoryError(f"data.{policy}.json: not a history record: {shape}") from None
    if saved is None:
        raise HistoryError(f"the history of policy {policy!r} has no upstream {upstream!r}")
    encoded = saved.get("history") if isinstance(saved, Mapping) else None
    if not isinstance(encoded, str):
        raise HistoryError(f"data.{policy}.json: upstreams.{upstream}.history: expected the encoded history")
    try:
        return History.decode(encoded)
    except ValueError as exc:
        raise HistoryError(str(exc)) from exc


def _summary(result: ReplayResult) -> dict[str, Any]:
    return {
        "calls": result.calls,
        "trips": result.trips,
        "podSecondsOpen": round(result.open_pod_seconds, 1),
        "rejectedWhileHealthy": result.rejected_healthy,
        "failedLetThrough": result.failed_let_through,
        "rejectedFailing": result.rejected_failing,
        "changes": [
            {"at": round(at, 1), "threshold": str(th), "value": value, "reason": why}
            for at, th, value, why in result.changes
        ],
    }


def run(args: argparse.Namespace) -> int:
    try:
        return _run(args)
    except (OSError, InvalidInput, PolicyError, ValueError) as exc:
        print(f"breakwater simulate: {exc}", file=sys.stderr)
        return 1


def _run(args: argparse.Namespace) -> int:
    documents = [d for d in load_documents(Path(args.policy).read_text(encoding="utf-8")) if d]
    manifest = next((d for d in documents if isinstance(d, Mapping) and is_policy_manifest(d)), None)
    if manifest is None:
        raise HistoryError(f"{args.policy} holds no CircuitBreakerPolicy")
    spec = parse_spec(manifest.get("spec") or {})
    upstream = args.upstream or spec.upstreams[0].name
    names = [u.name for u in spec.upstreams]
    if upstream not in names:
        raise InvalidInput(f"{args.policy} has no upstream {upstream!r} (its upstreams: {', '.join(names)})")
    settings = spec.settings_for(upstream)
    text = Path(args.history).read_text(encoding="utf-8")
    if text.lstrip().startswith("{"):
        name = str((manifest.get("metadata") or {}).get("name") or "")
        calls = calls_from_history(
            _exported(json.loads(text), name, upstream), pods=args.pods, seed=args.seed
        )
    else:
        calls = calls_from_csv(text)
    runs = {"as written": replay(calls, settings.breaker_settings(), timeout_seconds=settings.timeout.seconds,
                                 seed=args.seed)}  # fmt: skip
    if spec.adaptive.enabled or args.adaptive:
        runs["with tuning"] = replay(
            calls,
            settings.breaker_settings(),
            timeout_seconds=settings.timeout.seconds,
            adaptive=spec.adaptive,
            seed=args.seed,
        )
    report = {name: _summary(result) for name, result in runs.items()}
    if args.json:
        print(json.dumps({"upstream": upstream, **report}, indent=2))
        return 0
    span = calls[-1].at - calls[0].at if calls else 0.0
    print(f"upstream {upstream}: {len(calls)} calls over {span / 3600:.1f} h")
    header = (
        "",
        "trips",
        "pod-seconds open",
        "rejected while healthy",
        "failed let through",
        "rejected failing",
    )
    print("  ".join(f"{h:>22}" for h in header))
    for name, s in report.items():
        cells = (name, s["trips"], s["podSecondsOpen"], s["rejectedWhileHealthy"], s["failedLetThrough"],
                 s["rejectedFailing"])  # fmt: skip
        print("  ".join(f"{c!s:>22}" for c in cells))
    for change in report.get("with tuning", {}).get("changes", []):
        print(
            f"  at {change['at']:>9.0f} s: {change['threshold']} -> {change['value']:g} ({change['reason']})"
        )
    return 0
