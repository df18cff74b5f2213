"""Scalar types of the API: `Duration` and `Timestamp`, validated and parsed once, written back as text."""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Annotated, Any

from pydantic import Field, GetCoreSchemaHandler, GetJsonSchemaHandler, WithJsonSchema
from pydantic.json_schema import JsonSchemaValue
from pydantic_core import core_schema

from breakwater.api import rules
from breakwater.api.durations import (
    DURATION_MAX_LENGTH,
    MAX_DURATION_NS,
    TIMESTAMP_MAX_LENGTH,
    format_duration,
    format_timestamp,
    parse_duration_ns,
    parse_timestamp,
)

__all__ = ["Duration", "LabelValue", "Percent", "Timestamp"]

Percent = Annotated[int, Field(ge=1, le=100)]
"""A whole percentage, 1 to 100."""
LabelValue = Annotated[str, Field(max_length=63, pattern=rules.LABEL_VALUE_PATTERN)]
"""A Kubernetes label value."""


class Duration(str):
    """A Kubernetes-style duration ("250ms", "30s", "5m", "1h", "1m30s"), parsed once.

    It is the text the user wrote (so it serialises and compares as that string) and carries its
    value: `nanoseconds` (exact), `seconds` (float) and `timedelta`. Valid values are greater than 0
    and at most 720h. ``Duration("1m30s").seconds == 90.0``; ``Duration.from_seconds(1.5) == "1s500ms"``.
    """

    nanoseconds: int

    def __new__(cls, text: str) -> Duration:
        if isinstance(text, Duration):
            return text
        ns = parse_duration_ns(text) if isinstance(text, str) else None
        if ns is None or not 0 < ns <= MAX_DURATION_NS:
            raise ValueError(f"{text!r} {rules.DURATION.message}")
        self = super().__new__(cls, text)
        self.nanoseconds = ns
        return self

    @classmethod
    def from_seconds(cls, seconds: float) -> Duration:
        """The canonical duration of `seconds`, rounded to whole milliseconds."""
        return cls(format_duration(round(seconds * 1000) * 1_000_000))

    @property
    def seconds(self) -> float:
        return self.nanoseconds / 1e9

    @property
    def timedelta(self) -> timedelta:
        return timedelta(microseconds=self.nanoseconds // 1000)

    def __repr__(self) -> str:
        return f"Duration({str(self)!r})"

    @classmethod
    def _validate(cls, value: str) -> Duration:
        try:
            return cls(value)
        except ValueError:
            raise rules.DURATION.violation() from None

    @classmethod
    def __get_pydantic_core_schema__(
        cls, source: Any, handler: GetCoreSchemaHandler
    ) -> core_schema.CoreSchema:
        return core_schema.no_info_after_validator_function(
            cls._validate,
            core_schema.str_schema(max_length=DURATION_MAX_LENGTH, strict=True),
            serialization=core_schema.plain_serializer_function_ser_schema(
                str, return_schema=core_schema.str_schema()
            ),
        )

    @classmethod
    def __get_pydantic_json_schema__(
        cls, schema: core_schema.CoreSchema, handler: GetJsonSchemaHandler
    ) -> JsonSchemaValue:
        return {
            "type": "string",
            "maxLength": DURATION_MAX_LENGTH,
            "x-kubernetes-validations": [rules.DURATION.to_schema()],
        }


def _parse_timestamp(value: Any) -> datetime:
    if isinstance(value, datetime) and value.tzinfo is not None:
        return value
    parsed = parse_timestamp(value) if isinstance(value, str) else None
    if parsed is None:
        raise rules.TIMESTAMP.violation()
    return parsed


def _timestamp_core_schema(source: Any, handler: GetCoreSchemaHandler) -> core_schema.CoreSchema:
    return core_schema.no_info_plain_validator_function(
        _parse_timestamp,
        serialization=core_schema.plain_serializer_function_ser_schema(
            format_timestamp, return_schema=core_schema.str_schema()
        ),
    )


class _TimestampMarker:
    __get_pydantic_core_schema__ = staticmethod(_timestamp_core_schema)


Timestamp = Annotated[
    datetime,
    _TimestampMarker,
    WithJsonSchema(
        {
            "type": "string",
            "maxLength": TIMESTAMP_MAX_LENGTH,
            "x-kubernetes-validations": [rules.TIMESTAMP.to_schema()],
        }
    ),
]
"""An RFC 3339 timestamp with a time zone in manifests ("2030-01-01T12:00:00Z"); an aware `datetime`
in Python, written back in RFC 3339 (UTC as ``Z``)."""
