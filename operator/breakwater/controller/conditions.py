"""Status conditions as the Kubernetes API conventions define them, built as `api.status.Condition`.

`lastTransitionTime` changes only when a condition's status flips, so a status rewritten with the same
facts is byte-identical and the operator can skip the write.
"""

from __future__ import annotations

import datetime
from collections.abc import Iterable, Mapping
from typing import Any

from breakwater.api.status import Condition, ConditionStatus

_STATUS = {True: ConditionStatus.TRUE, False: ConditionStatus.FALSE, None: ConditionStatus.UNKNOWN}


def condition(type_: str, holds: bool | None, reason: str, message: str = "") -> Condition:
    """A condition of `type_` that holds (True), does not (False) or is not known (None)."""
    return Condition(type=type_, status=_STATUS[holds], reason=reason, message=message)


def stored(previous: Iterable[Mapping[str, Any]] | None, type_: str) -> Condition | None:
    """The condition of `type_` as the stored status has it."""
    for item in previous or ():
        if item.get("type") == type_:
            return Condition.model_validate(item)
    return None


def now() -> datetime.datetime:
    return datetime.datetime.now(datetime.UTC).replace(microsecond=0)


def merge(
    previous: Iterable[Mapping[str, Any]] | None,
    wanted: Iterable[Condition],
    *,
    generation: int,
    at: datetime.datetime | None = None,
) -> list[Condition]:
    """The new conditions: `wanted` in order, keeping lastTransitionTime where the status is unchanged."""
    old = {c.get("type"): c for c in previous or ()}
    stamp = at or now()
    merged = []
    for cond in wanted:
        before = old.get(cond.type)
        since = stamp
        if before is not None and before.get("status") == cond.status and before.get("lastTransitionTime"):
            since = Condition.model_validate(before).last_transition_time or stamp
        merged.append(
            cond.model_copy(update={"observed_generation": generation, "last_transition_time": since})
        )
    return merged
