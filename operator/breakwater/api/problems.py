"""Field problems, said as the API server says them: shared by the pydantic models and the plain parser.

`schema_message` turns one error record of pydantic's shape (``type``, ``loc``, ``input``, ``ctx``,
``msg``) into the words of k8s.io/apimachinery's field errors; `breakwater.api.plain` builds the same
records itself, so the sidecar's messages are today's without loading pydantic.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

__all__ = ["Problem", "join_path", "schema_message", "shown"]


@dataclass(frozen=True)
class Problem:
    """One reason a manifest is invalid: where (a field path such as spec.upstreams[0].port) and what."""

    path: str
    message: str
    rule: str | None = None
    """The `breakwater.api.rule.Rule` id, when a cross-field rule failed."""

    def __str__(self) -> str:
        return f"{self.path}: {self.message}" if self.path else self.message


def join_path(loc: tuple[int | str, ...]) -> str:
    path = ""
    for part in loc:
        if isinstance(part, int):
            path += f"[{part}]"
        elif re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", part):
            path += f".{part}" if path else part
        else:
            path += f"[{part}]"
    return path


# pydantic's error types, said as the API server says them (k8s.io/apimachinery field errors and the
# OpenAPI validator's messages), so that `breakwater validate` and `kubectl apply` print the same words.
_JSON_TYPES = {
    "int_type": "integer",
    "int_from_float": "integer",
    "int_parsing": "integer",
    "string_type": "string",
    "bool_type": "boolean",
    "bool_parsing": "boolean",
    "float_type": "number",
    "float_parsing": "number",
    "list_type": "array",
    "dict_type": "object",
    "model_type": "object",
    "model_attributes_type": "object",
    "dataclass_type": "object",
}


def json_type(value: object) -> str:
    """The JSON Schema type name of a decoded JSON or YAML value (what the API server calls it)."""
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, int):
        return "integer"
    if isinstance(value, float):
        return "number"
    if isinstance(value, str):
        return "string"
    if isinstance(value, list):
        return "array"
    if value is None:
        return "null"
    return "object"


def shown(value: object) -> str:
    """A value as the API server prints it after `Invalid value:` (JSON, strings quoted)."""
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return json.dumps(value) if isinstance(value, str | bool) or value is None else str(value)


def schema_message(error: Mapping[str, Any], path: str) -> str:
    kind, value, ctx = error["type"], error.get("input"), error.get("ctx") or {}
    if kind == "missing":
        return "Required value"
    if kind == "extra_forbidden":
        return "unknown field"
    if kind in _JSON_TYPES:
        given = json_type(value)
        return f'Invalid value: "{given}": {path} in body must be of type {_JSON_TYPES[kind]}: "{given}"'
    if kind == "enum":
        supported = ", ".join(
            f'"{v.strip()}"'
            for v in str(ctx.get("expected", "")).replace(" or ", ",").split(",")
            if v.strip()
        )
        return f"Unsupported value: {shown(value)}: supported values: {supported.replace(chr(39), '')}"
    bounds = {
        "greater_than_equal": ("ge", "greater than or equal to"),
        "greater_than": ("gt", "greater than"),
        "less_than_equal": ("le", "less than or equal to"),
        "less_than": ("lt", "less than"),
    }
    if kind in bounds:
        key, words = bounds[kind]
        return f"Invalid value: {shown(value)}: {path} in body should be {words} {shown(ctx.get(key))}"
    if kind == "string_pattern_mismatch":
        return f"Invalid value: {shown(value)}: {path} in body should match '{ctx.get('pattern')}'"
    if kind == "string_too_long":
        return f"Too long: may not be more than {ctx.get('max_length')} bytes"
    if kind == "string_too_short":
        least = ctx.get("min_length")
        return f"Invalid value: {shown(value)}: {path} in body should be at least {least} chars long"
    if kind == "too_long":
        return f"Too many: {ctx.get('actual_length')}: must have at most {ctx.get('max_length')} items"
    if kind == "too_short":
        least, actual = ctx.get("min_length"), ctx.get("actual_length")
        return f"Invalid value: {actual}: {path} in body should have at least {least} items"
    if kind == "duplicate":
        return f"Duplicate value: {ctx.get('value')}"
    return str(error["msg"])
