"""`breakwater promote`: the merge patch that writes a policy's suggested thresholds into its spec.

Reads the policy as the API server returns it (with its status) and prints a JSON merge patch; the
one-liner that promotes the suggestions of `payments` in namespace `shop`:

    kubectl patch cbp payments -n shop --type merge \\
      -p "$(kubectl get cbp payments -n shop -o json | breakwater promote -)"

A policy with one upstream (and no per-upstream trip/open overrides) gets its `trip` and `open`
sections patched; otherwise each upstream's suggestion goes into its `overrides` (a merge patch
replaces a list as a whole, so the patch carries every upstream).
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from breakwater.api.manifests import load_documents
from breakwater.api.policy import PolicyError, parse_spec
from breakwater.api.spec import CircuitBreakerPolicySpec
from breakwater.errors import InvalidInput

__all__ = ["add_arguments", "promotion_patch", "run"]


class NothingToPromote(InvalidInput):
    """The policy's status holds no suggestion (tuning is delivering, or no evaluation yet)."""


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "file", metavar="FILE", help="the policy as JSON or YAML, with its status ('-': stdin)"
    )
    parser.add_argument("--upstream", action="append", help="promote only this upstream (repeatable)")


def _number(suggested: Mapping[str, Any], key: str, name: str) -> float:
    value = suggested[key]
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise InvalidInput(f"status.upstreams[{name}].suggested.{key}: {value!r} is not a number")
    return value


def _changes(spec: CircuitBreakerPolicySpec, name: str, suggested: Any) -> dict[str, Any]:
    """The trip, open and halfOpen sections of upstream `name` with the suggested values in them."""
    if not isinstance(suggested, Mapping):
        raise InvalidInput(f"status.upstreams[{name}].suggested: expected a mapping, got {suggested!r}")
    settings = spec.settings_for(name)
    trip, opened, half_open = settings.trip.to_dict(), settings.open.to_dict(), settings.half_open.to_dict()
    if "consecutiveFailures" in suggested and trip.get("consecutiveFailures"):
        trip["consecutiveFailures"] = int(_number(suggested, "consecutiveFailures", name))
    if "failureRatePercent" in suggested and "failureRate" in trip:
        trip["failureRate"]["percent"] = round(_number(suggested, "failureRatePercent", name))
    if "slowerThan" in suggested and "slowCalls" in trip:
        trip["slowCalls"]["slowerThan"] = str(suggested["slowerThan"])
    if "openDuration" in suggested:
        opened["duration"] = str(suggested["openDuration"])
    if "openMaxDuration" in suggested:
        opened["maxDuration"] = str(suggested["openMaxDuration"])
    if "successesToClose" in suggested:
        half_open["successesToClose"] = int(_number(suggested, "successesToClose", name))
    return {"trip": trip, "open": opened, "halfOpen": half_open}


def _merged(target: Any, patch: Any) -> Any:
    """`patch` applied to `target` as a JSON merge patch (RFC 7386), as `kubectl patch --type merge`."""
    if not isinstance(patch, Mapping):
        return patch
    out = dict(target) if isinstance(target, Mapping) else {}
    for key, value in patch.items():
        if value is None:
            out.pop(key, None)
        else:
            out[key] = _merged(out.get(key), value)
    return out


def _checked(policy: Mapping[str, Any], patch: dict[str, Any]) -> dict[str, Any]:
    """`patch`, once the spec it makes passes the API server's checks (else the patch is refused)."""
    try:
        parse_spec(_merged(policy.get("spec") or {}, patch["spec"]))
    except PolicyError as exc:
        raise InvalidInput(f"the suggestion would make the policy invalid, not promoted: {exc}") from None
    return patch


def promotion_patch(policy: Mapping[str, Any], only: list[str] | None = None) -> dict[str, Any]:
    spec = parse_spec(policy.get("spec") or {})
    names = [u.name for u in spec.upstreams]
    unknown = [name for name in only or () if name not in names]
    if unknown:
        raise InvalidInput(
            f"no upstream {', '.join(map(repr, unknown))} in spec (its upstreams: {', '.join(names)})"
        )
    # A suggestion for an upstream no longer in the spec (renamed or removed since) promotes nothing.
    suggestions = {
        u["name"]: u["suggested"]
        for u in (policy.get("status") or {}).get("upstreams") or ()
        if isinstance(u, Mapping)
        and u.get("name") in names
        and u.get("suggested")
        and (not only or u["name"] in only)
    }
    if not suggestions:
        raise NothingToPromote("no status.upstreams[].suggested to promote (tuning delivering, or none yet)")
    single = len(spec.upstreams) == 1
    overridden = any(
        u.overrides is not None and (u.overrides.trip is not None or u.overrides.open is not None)
        for u in spec.upstreams
    )
    if single and not overridden:
        name = spec.upstreams[0].name
        return _checked(policy, {"spec": _changes(spec, name, suggestions[name])})
    upstreams = []
    for upstream in (policy.get("spec") or {}).get("upstreams") or ():
        entry = dict(upstream)
        if upstream["name"] in suggestions:
            overrides = dict(entry.get("overrides") or {})
            overrides.update(_changes(spec, upstream["name"], suggestions[upstream["name"]]))
            entry["overrides"] = overrides
        upstreams.append(entry)
    return _checked(policy, {"spec": {"upstreams": upstreams}})


def run(args: argparse.Namespace) -> int:
    try:
        text = sys.stdin.read() if args.file == "-" else Path(args.file).read_text(encoding="utf-8")
        documents = [d for d in load_documents(text) if d]
        if len(documents) != 1 or not isinstance(documents[0], Mapping):
            raise NothingToPromote("expected one policy object (kubectl get cbp NAME -o json)")
        print(json.dumps(promotion_patch(documents[0], args.upstream), separators=(",", ":")))
        return 0
    except (OSError, InvalidInput, PolicyError, ValueError) as exc:
        print(f"breakwater promote: {exc}", file=sys.stderr)
        return 1
