"""Status conditions as the Kubernetes API conventions define them.

`lastTransitionTime` changes only when a condition's status flips, so a status rewritten with the same
facts is byte-identical and the operator can skip the write.
"""

from __future__ import annotations

import datetime
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class Condition:
    type: str
    status: bool | None  # None: Unknown
    reason: str
    message: str = ""

    @property
    def status_text(self) -> str:
        return "Unknown" if self.status is None else ("True" if self.status else "False")


def now_rfc3339() -> str:
    return datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def merge(
    previous: Iterable[Mapping[str, Any]] | None,
    wanted: Iterable[Condition],
    *,
    generation: int,
    now: str | None = None,
) -> list[dict[str, Any]]:
    """The new conditions list: `wanted` in order, keeping lastTransitionTime where status is unchanged."""
    old = {c.get("type"): c for c in previous or ()}
    result = []
    for cond in wanted:
        before = old.get(cond.type)
        unchanged = before is not None and before.get("status") == cond.status_text
        result.append(
            {
                "type": cond.type,
                "status": cond.status_text,
                "reason": cond.reason,
                "message": cond.message,
                "observedGeneration": generation,
                "lastTransitionTime": (before or {}).get("lastTransitionTime") if unchanged else None,
            }
        )
    stamp = now or now_rfc3339()
    for item in result:
        if not item["lastTransitionTime"]:
            item["lastTransitionTime"] = stamp
    return result
