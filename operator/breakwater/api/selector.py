"""The label selector of a policy: which client pods of its namespace get the sidecar."""

from __future__ import annotations

from enum import StrEnum
from typing import Annotated

from pydantic import Field, Strict

from breakwater.api import rules
from breakwater.api.base import SpecModel
from breakwater.api.scalars import LabelValue

__all__ = ["LabelSelector", "LabelSelectorRequirement", "SelectorOperator"]


class SelectorOperator(StrEnum):
    """A label selector operator."""

    IN = "In"
    NOT_IN = "NotIn"
    EXISTS = "Exists"
    DOES_NOT_EXIST = "DoesNotExist"


OperatorField = Annotated[SelectorOperator, Strict(False)]


class LabelSelectorRequirement(SpecModel):
    """One term of matchExpressions: a label key, an operator and (for In, NotIn) values."""

    __cel_rules__ = (rules.SELECTOR_VALUES_REQUIRED, rules.SELECTOR_VALUES_FORBIDDEN)

    key: Annotated[str, Field(max_length=317, pattern=rules.LABEL_KEY_PATTERN)]
    """The label key the term is about."""
    operator: OperatorField
    """In, NotIn, Exists or DoesNotExist."""
    values: Annotated[list[LabelValue], Field(max_length=64)] | None = None
    """The values for In and NotIn (at least one); must be empty for Exists and DoesNotExist."""


class LabelSelector(SpecModel):
    """Which client pods of the policy's namespace get the sidecar (a standard label selector).

    Both parts are ANDed; at least one must be given (an empty selector would match every pod).
    """

    __cel_rules__ = (rules.SELECTOR_NOT_EMPTY, rules.SELECTOR_LABEL_KEYS)

    match_labels: Annotated[dict[str, LabelValue], Field(max_length=64)] | None = None
    """Labels a pod must carry, with these exact values."""
    match_expressions: Annotated[list[LabelSelectorRequirement], Field(max_length=32)] | None = None
    """Set-based requirements a pod's labels must all satisfy."""
