"""Readers of JSON values with pydantic's lax rules and pydantic's error records, without pydantic.

Each reader takes the error list, the value's location and the value, and returns the value as the
models would (``True`` for an int field is 1, ``5.0`` is 5, an int for a float field is a float) or
`BAD` after recording an error of pydantic's shape (``type``, ``loc``, ``input``, ``ctx``, ``msg``),
which `api.problems` words as the models' errors are worded. Only JSON's own types are decided here:
text the models would coerce to a number or a flag, non-finite floats, and non-JSON types raise
`NeedsModels`, and the caller asks the models (they are the definition; such documents are rare).
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Mapping
from enum import Enum
from typing import Any, Final, TypeVar

from breakwater.api.problems import Problem, join_path, schema_message

__all__ = [
    "BAD",
    "MISSING",
    "Errors",
    "Field",
    "Loc",
    "NeedsModels",
    "Reader",
    "boolean",
    "dict_of_strings",
    "enum",
    "integer",
    "list_of",
    "literal",
    "nullable",
    "number",
    "read_fields",
    "string",
]

Loc = tuple[int | str, ...]
E = TypeVar("E", bound=Enum)
T = TypeVar("T")


class _Marker:
    def __init__(self, name: str) -> None:
        self.name = name

    def __repr__(self) -> str:
        return self.name


BAD: Final[Any] = _Marker("BAD")
"""What a reader returns after recording an error."""
MISSING: Final[Any] = _Marker("MISSING")
"""The default of a required field."""


class NeedsModels(Exception):
    """A value only the pydantic models can decide: text they would coerce, or a non-JSON type."""


class Errors:
    """The error records of one document, in the order the models report them."""

    def __init__(self) -> None:
        self.records: list[dict[str, Any]] = []

    def add(self, loc: Loc, kind: str, value: Any, msg: str, **ctx: Any) -> Any:
        self.records.append({"type": kind, "loc": loc, "input": value, "ctx": ctx, "msg": msg})
        return BAD

    def value_error(self, loc: Loc, value: Any, message: str) -> Any:
        return self.add(loc, "value_error", value, f"Value error, {message}")

    def __len__(self) -> int:
        return len(self.records)

    def problems(self) -> list[Problem]:
        out = []
        for record in self.records:
            path = join_path(record["loc"])
            out.append(Problem(path, schema_message(record, path)))
        return out


def _undecided(value: Any) -> bool:
    """Text, or not a type `json.loads` makes: the models decide."""
    return type(value) not in (bool, int, float, list, dict) and value is not None


def _bounds(errors: Errors, loc: Loc, value: Any, ge: Any, gt: Any, le: Any, given: Any) -> Any:
    """`value` if within the bounds; else an error recording the input as `given` (``false``, not the 0
    it was read as), as the models record it."""
    if ge is not None and not value >= ge:
        return errors.add(
            loc, "greater_than_equal", given, f"Input should be greater than or equal to {ge}", ge=ge
        )
    if gt is not None and not value > gt:
        return errors.add(loc, "greater_than", given, f"Input should be greater than {gt}", gt=gt)
    if le is not None and not value <= le:
        return errors.add(loc, "less_than_equal", given, f"Input should be less than or equal to {le}", le=le)
    return value


def integer(errors: Errors, loc: Loc, value: Any, *, ge: Any = None, gt: Any = None, le: Any = None) -> Any:
    given, kind = value, type(value)
    if kind is bool:
        value = int(value)
    elif kind is float:
        if not math.isfinite(value) or abs(value) >= 2**63:
            raise NeedsModels(loc)
        if not value.is_integer():
            return errors.add(
                loc,
                "int_from_float",
                value,
                "Input should be a valid integer, got a number with a fractional part",
            )
        value = int(value)
    elif kind is not int:
        if _undecided(value):
            raise NeedsModels(loc)
        return errors.add(loc, "int_type", value, "Input should be a valid integer")
    return _bounds(errors, loc, value, ge, gt, le, given)


def number(errors: Errors, loc: Loc, value: Any, *, ge: Any = None, gt: Any = None, le: Any = None) -> Any:
    given, kind = value, type(value)
    if kind is float:
        if not math.isfinite(value):
            raise NeedsModels(loc)
    elif kind is int or kind is bool:
        if abs(value) >= 2**53:
            raise NeedsModels(loc)
        value = float(value)
    else:
        if _undecided(value):
            raise NeedsModels(loc)
        return errors.add(loc, "float_type", value, "Input should be a valid number")
    return _bounds(errors, loc, value, ge, gt, le, given)


def boolean(errors: Errors, loc: Loc, value: Any) -> Any:
    kind = type(value)
    if kind is bool:
        return value
    if kind is int or kind is float:
        if value in (0, 1):
            return bool(value)
        return errors.add(
            loc, "bool_parsing", value, "Input should be a valid boolean, unable to interpret input"
        )
    if _undecided(value):
        raise NeedsModels(loc)
    return errors.add(loc, "bool_type", value, "Input should be a valid boolean")


def string(
    errors: Errors,
    loc: Loc,
    value: Any,
    *,
    min_length: int | None = None,
    max_length: int | None = None,
    pattern: str | None = None,
) -> Any:
    if type(value) is not str:
        if _undecided(value):
            raise NeedsModels(loc)
        return errors.add(loc, "string_type", value, "Input should be a valid string")
    if min_length is not None and len(value) < min_length:
        unit = "character" if min_length == 1 else "characters"
        return errors.add(
            loc,
            "string_too_short",
            value,
            f"String should have at least {min_length} {unit}",
            min_length=min_length,
        )
    if max_length is not None and len(value) > max_length:
        unit = "character" if max_length == 1 else "characters"
        return errors.add(
            loc,
            "string_too_long",
            value,
            f"String should have at most {max_length} {unit}",
            max_length=max_length,
        )
    if pattern is not None and not _regex(pattern).search(value):
        return errors.add(
            loc, "string_pattern_mismatch", value, f"String should match pattern '{pattern}'", pattern=pattern
        )
    return value


_REGEXES: dict[str, re.Pattern[str]] = {}


def _regex(pattern: str) -> re.Pattern[str]:
    """`pattern` as the models' regex engine reads it: ``$`` is the end of the text, never before a
    final newline as in Python's."""
    compiled = _REGEXES.get(pattern)
    if compiled is None:
        compiled = re.compile(pattern[:-1] + r"\Z" if pattern.endswith("$") else pattern)
        _REGEXES[pattern] = compiled
    return compiled


def _expected(choices: list[str]) -> str:
    quoted = [f"'{c}'" for c in choices]
    return quoted[0] if len(quoted) == 1 else f"{', '.join(quoted[:-1])} or {quoted[-1]}"


def enum(errors: Errors, loc: Loc, value: Any, kind: type[E]) -> Any:
    if isinstance(value, kind):
        return value
    if isinstance(value, str) and type(value) is not str:
        raise NeedsModels(loc)
    choices = [member.value for member in kind]
    if type(value) is str and value in choices:
        return kind(value)
    expected = _expected(choices)
    return errors.add(loc, "enum", value, f"Input should be {expected}", expected=expected)


def literal(errors: Errors, loc: Loc, value: Any, choices: tuple[str, ...]) -> Any:
    if isinstance(value, str) and type(value) is not str:
        raise NeedsModels(loc)
    if type(value) is str and value in choices:
        return value
    expected = _expected(list(choices))
    return errors.add(loc, "literal_error", value, f"Input should be {expected}", expected=expected)


Reader = Callable[[Errors, Loc, Any], Any]


def nullable(reader: Reader) -> Reader:
    def read(errors: Errors, loc: Loc, value: Any) -> Any:
        return None if value is None else reader(errors, loc, value)

    return read


def list_of(errors: Errors, loc: Loc, value: Any, item: Reader) -> Any:
    if type(value) is not list:
        if _undecided(value):
            raise NeedsModels(loc)
        return errors.add(loc, "list_type", value, "Input should be a valid list")
    before = len(errors)
    items = [item(errors, (*loc, i), v) for i, v in enumerate(value)]
    return items if len(errors) == before else BAD


def dict_of_strings(errors: Errors, loc: Loc, value: Any) -> Any:
    if type(value) is not dict:
        if _undecided(value) or isinstance(value, Mapping):
            raise NeedsModels(loc)
        return errors.add(loc, "dict_type", value, "Input should be a valid dictionary")
    before = len(errors)
    out = {}
    for key, text in value.items():
        if type(key) is not str:
            raise NeedsModels(loc)
        out[key] = string(errors, (*loc, key), text)
    return out if len(errors) == before else BAD


class Field:
    """One field of an object: its Python name, its wire name, how it is read, its default."""

    __slots__ = ("alias", "default", "name", "read")

    def __init__(self, name: str, alias: str, read: Reader, default: Any = MISSING) -> None:
        self.name, self.alias, self.read, self.default = name, alias, read, default


def read_fields(
    errors: Errors,
    loc: Loc,
    value: Any,
    fields: tuple[Field, ...],
    *,
    by_name: bool = True,
    extra: str = "forbid",
    dataclass: bool = False,
) -> dict[str, Any] | None:
    """The field values of one object (defaults filled in), or None when it recorded an error.

    As the models do: fields in their order, then the unknown keys (``extra``: ``forbid`` records
    them, ``ignore`` drops them); a model is also read by Python names (``by_name``), a dataclass
    by wire names only.
    """
    if type(value) is not dict:
        if _undecided(value) or isinstance(value, Mapping):
            raise NeedsModels(loc)
        kind = "dataclass_type" if dataclass else "model_type"
        errors.add(loc, kind, value, "Input should be a valid dictionary")
        return None
    before = len(errors)
    out: dict[str, Any] = {}
    used: set[str] = set()
    for field in fields:
        if field.alias in value:
            key = field.alias
        elif by_name and field.name in value:
            key = field.name
        else:
            if field.default is MISSING:
                errors.add((*loc, field.alias), "missing", value, "Field required")
            else:
                out[field.name] = field.default() if callable(field.default) else field.default
            continue
        used.add(key)
        out[field.name] = field.read(errors, (*loc, key), value[key])
    if extra == "forbid":
        for key, item in value.items():
            if key in used:
                continue
            if dataclass:
                errors.add((*loc, key), "unexpected_keyword_argument", item, "Unexpected keyword argument")
            else:
                errors.add((*loc, key), "extra_forbidden", item, "Extra inputs are not permitted")
    return out if len(errors) == before else None
