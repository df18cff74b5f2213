"""From pydantic's JSON Schema to a structural OpenAPI v3 schema the API server accepts.

What changes on the way (apiextensions.k8s.io/v1 "structural schema" rules):

- ``$ref`` is inlined (keywords next to a ``$ref``, such as a field's default, win over the
  referenced definition's). A field's own description takes the place of its type's first paragraph
  (the type's summary, which the field's words say for its role here); the type's further paragraphs
  follow, so `kubectl explain` says each thing once;
- ``anyOf: [X, null]`` becomes X: optional fields are simply not required (the API server prunes
  nulls from non-nullable fields, and the models drop them too);
- ``exclusiveMinimum: N`` (2020-12) becomes ``minimum: N, exclusiveMinimum: true`` (OpenAPI v3.0);
- ``additionalProperties: false`` goes (pruning and strict field validation reject unknown fields),
  ``additionalProperties: true`` becomes ``x-kubernetes-preserve-unknown-fields: true``;
- ``title`` goes; ``null`` members of defaults go;
- anything else unknown is an error here rather than a CRD the API server refuses.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from breakwater.errors import BreakwaterError

__all__ = ["SchemaError", "structural", "unwrap"]

KEY_ORDER = (
    "description",
    "type",
    "format",
    "enum",
    "default",
    "minimum",
    "exclusiveMinimum",
    "maximum",
    "exclusiveMaximum",
    "minLength",
    "maxLength",
    "pattern",
    "minItems",
    "maxItems",
    "items",
    "minProperties",
    "maxProperties",
    "additionalProperties",
    "properties",
    "required",
    "x-kubernetes-list-type",
    "x-kubernetes-list-map-keys",
    "x-kubernetes-preserve-unknown-fields",
    "x-kubernetes-validations",
)
_DROPPED = {"title", "$defs"}
_RULE_KEYS = ("rule", "message", "messageExpression", "fieldPath", "reason", "optionalOldSelf")


class SchemaError(BreakwaterError):
    """A model's JSON Schema uses something a structural schema cannot express (a bug of the models)."""


def structural(schema: Mapping[str, Any]) -> dict[str, Any]:
    """The structural schema of a pydantic JSON Schema (validation mode, by alias)."""
    defs = schema.get("$defs", {})
    return _convert(schema, defs, path="")


def _resolve(node: Mapping[str, Any], defs: Mapping[str, Any], path: str) -> dict[str, Any]:
    """Inline $ref and collapse anyOf-with-null, keeping the node's own keywords on top."""
    node = dict(node)
    if "anyOf" in node:
        options = [o for o in node.pop("anyOf") if o != {"type": "null"}]
        if len(options) != 1:
            raise SchemaError(f"{path or '<root>'}: unions other than X | None are not structural")
        if node.get("default", ...) is None:
            del node["default"]
        inner = _resolve(options[0], defs, path)
        node = {**inner, **node, "description": _describe(node.get("description"), inner.get("description"))}
    if "$ref" in node:
        name = node.pop("$ref").rsplit("/", 1)[-1]
        target = _resolve(defs[name], defs, path)
        validations = target.get("x-kubernetes-validations", []) + node.pop("x-kubernetes-validations", [])
        own, shared = node.get("description"), target.get("description")
        node = {**target, **node, "description": _describe(own, shared)}
        if validations:
            node["x-kubernetes-validations"] = validations
    if not node.get("description"):
        node.pop("description", None)
    return node


def _describe(own: str | None, shared: str | None) -> str | None:
    """A field's description: its own words, then what its type says beyond its summary."""
    if not own or not shared:
        return own or shared
    details = shared.strip().split("\n\n")[1:]
    return "\n\n".join([own.strip(), *(p.strip() for p in details)])


def unwrap(text: str) -> str:
    """Docstring text as prose: lines of a paragraph joined, paragraphs kept apart."""
    paragraphs = [" ".join(line.strip() for line in p.splitlines()) for p in text.strip().split("\n\n")]
    return "\n\n".join(p for p in paragraphs if p)


def _strip_nulls(value: Any) -> Any:
    if isinstance(value, Mapping):
        return {k: _strip_nulls(v) for k, v in value.items() if v is not None}
    if isinstance(value, list):
        return [_strip_nulls(v) for v in value]
    return value


def _convert(raw: Mapping[str, Any], defs: Mapping[str, Any], path: str) -> dict[str, Any]:
    node = _resolve(raw, defs, path)
    out: dict[str, Any] = {}
    for key, value in node.items():
        if key in _DROPPED:
            continue
        if key == "properties":
            out[key] = {name: _convert(sub, defs, f"{path}.{name}") for name, sub in value.items()}
        elif key == "items":
            out[key] = _convert(value, defs, f"{path}[]")
        elif key == "additionalProperties":
            if value is True:
                out["x-kubernetes-preserve-unknown-fields"] = True
            elif isinstance(value, Mapping):
                out[key] = _convert(value, defs, f"{path}{{}}")
        elif key in ("exclusiveMinimum", "exclusiveMaximum") and not isinstance(value, bool):
            out["minimum" if key == "exclusiveMinimum" else "maximum"] = value
            out[key] = True
        elif key == "const":
            out["enum"] = [value]
        elif key == "default":
            out[key] = _strip_nulls(value)
        elif key == "description":
            out[key] = unwrap(value)
        elif key == "x-kubernetes-validations":
            out[key] = [{k: rule[k] for k in _RULE_KEYS if k in rule} for rule in value]
        elif key in KEY_ORDER:
            out[key] = value
        else:
            raise SchemaError(f"{path or '<root>'}: keyword {key!r} has no structural equivalent")
    if "type" not in out and not out.get("x-kubernetes-preserve-unknown-fields"):
        raise SchemaError(f"{path or '<root>'}: every node of a structural schema needs a type")
    return {key: out[key] for key in KEY_ORDER if key in out}
