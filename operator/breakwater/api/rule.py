"""What a cross-field rule of the API is: a CEL expression, its Python twin and the one message.

`api/rules.py` holds the rules themselves, in one table; this module is how one becomes an
``x-kubernetes-validations`` entry of the CRD (`Rule.to_schema`) and a pydantic error of the models
(`Rule.violation`), the same message either way.
"""

from __future__ import annotations

import textwrap
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Literal

from pydantic_core import PydanticCustomError

__all__ = ["Reason", "Rule"]

# FieldValueDuplicate is left out on purpose: the API server then prints "Duplicate value" without
# the rule's message.
Reason = Literal["FieldValueInvalid", "FieldValueRequired", "FieldValueForbidden"]


@dataclass(frozen=True, kw_only=True)
class Rule:
    """One validation rule, as CEL and as Python, with the message both report."""

    id: str
    """Stable name, used by tests and docs (e.g. ``halfOpen.successesToClose``)."""
    cel: str
    """The expression; ``self`` is the object (or scalar) the rule is attached to."""
    message: str
    """What is wrong and how to fix it, naming the field."""
    check: Callable[[Any], bool]
    """The Python twin of `cel`: True when the value is valid."""
    field_path: str | None = None
    """Where the API server reports the error, relative to the object (``.successesToClose``)."""
    reason: Reason | None = None

    def violation(self) -> PydanticCustomError:
        """The pydantic error a model validator raises when `check` fails (type ``cel_rule``)."""
        return PydanticCustomError(
            "cel_rule",
            "{message}",
            {"message": self.message, "rule": self.id, "field_path": self.field_path or ""},
        )

    def to_schema(self) -> dict[str, str]:
        """The ``x-kubernetes-validations`` entry."""
        entry = {"rule": textwrap.dedent(self.cel).strip(), "message": self.message}
        if self.field_path:
            entry["fieldPath"] = self.field_path
        if self.reason:
            entry["reason"] = self.reason
        return entry
