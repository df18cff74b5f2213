"""Kubernetes label selectors (matchLabels + matchExpressions), evaluated the way the API server does."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from breakwater.errors import InvalidInput


class SelectorError(InvalidInput):
    """A selector the API server would not accept (unknown operator, missing or extra values)."""


def matches(selector: Mapping[str, Any] | None, labels: Mapping[str, str]) -> bool:
    """True when `labels` satisfy every term of `selector`; an empty selector selects everything.

    A missing selector (None) selects nothing, as for a PodDisruptionBudget or a NetworkPolicy with
    no selector: a policy must say which pods it protects.
    """
    if selector is None:
        return False
    for key, value in (selector.get("matchLabels") or {}).items():
        if labels.get(key) != value:
            return False
    for expr in selector.get("matchExpressions") or ():
        key, op, values = expr["key"], expr["operator"], expr.get("values") or []
        if op == "In":
            ok = key in labels and labels[key] in values
        elif op == "NotIn":
            ok = key not in labels or labels[key] not in values
        elif op == "Exists":
            ok = key in labels
        elif op == "DoesNotExist":
            ok = key not in labels
        else:
            raise SelectorError(f"unknown selector operator {op!r} for key {key!r}")
        if not ok:
            return False
    return True
