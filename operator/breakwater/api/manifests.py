"""Reading YAML manifests the way kubectl does, so `breakwater validate` sees what the API server sees.

kubectl turns YAML into JSON with go-yaml (YAML 1.1), whose idea of plain scalars differs from
PyYAML's in a few places that matter for a strict schema:

- ``y``, ``Y``, ``n``, ``N`` are booleans (PyYAML: strings), so ``name: n`` is not a string;
- ``1e3`` is a number (PyYAML: a string without a dot);
- ``1:30`` is a string (PyYAML: the sexagesimal integer 90);
- ``2030-01-01T12:00:00Z`` stays a string (PyYAML: a datetime, and it also reads forms with a space
  for the ``T`` that the API server refuses);
- mapping keys become JSON strings (``y: x`` is ``{"true": "x"}``, ``1: x`` is ``{"1": "x"}``).
"""

from __future__ import annotations

import re
from typing import Any

import yaml

from breakwater.errors import InvalidInput

__all__ = ["ManifestLoader", "load_documents"]

_BOOL = re.compile(
    r"^(?:y|Y|yes|Yes|YES|n|N|no|No|NO|true|True|TRUE|false|False|FALSE|on|On|ON|off|Off|OFF)$"
)
_INT = re.compile(r"^(?:[-+]?0b[0-1_]+|[-+]?0[0-7_]+|[-+]?(?:0|[1-9][0-9_]*)|[-+]?0x[0-9a-fA-F_]+)$")
_FLOAT = re.compile(
    r"^(?:[-+]?(?:\.[0-9]+|[0-9]+(?:\.[0-9]*)?)(?:[eE][-+]?[0-9]+)?|[-+]?\.(?:inf|Inf|INF)|\.(?:nan|NaN|NAN))$"
)
_REPLACED = {
    "tag:yaml.org,2002:bool",
    "tag:yaml.org,2002:int",
    "tag:yaml.org,2002:float",
    "tag:yaml.org,2002:timestamp",
}


class ManifestLoader(yaml.SafeLoader):
    """A safe loader with go-yaml's (kubectl's) plain-scalar rules; a key twice in one mapping is an
    error, as with kubectl's strict field validation (PyYAML would keep the last silently)."""

    bool_values = {**yaml.SafeLoader.bool_values, "y": True, "n": False}

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
        if isinstance(node, yaml.MappingNode):
            seen: set[str] = set()
            for key_node, _ in node.value:
                if key_node.tag == "tag:yaml.org,2002:merge" or not isinstance(key_node, yaml.ScalarNode):
                    continue  # what a merge key brings may be overridden; a complex key is rare
                key = _json_key(self.construct_object(key_node))
                if key in seen:
                    raise yaml.constructor.ConstructorError(
                        "while constructing a mapping",
                        node.start_mark,
                        f"duplicate key {key!r}",
                        key_node.start_mark,
                    )
                seen.add(key)
        return super().construct_mapping(node, deep)


ManifestLoader.yaml_implicit_resolvers = {
    first: [(tag, regexp) for tag, regexp in resolvers if tag not in _REPLACED]
    for first, resolvers in yaml.SafeLoader.yaml_implicit_resolvers.items()
}
ManifestLoader.add_implicit_resolver("tag:yaml.org,2002:bool", _BOOL, list("yYnNtTfFoO"))
ManifestLoader.add_implicit_resolver("tag:yaml.org,2002:int", _INT, list("-+0123456789"))
ManifestLoader.add_implicit_resolver("tag:yaml.org,2002:float", _FLOAT, list("-+0123456789."))


def _json_key(key: Any) -> str:
    if isinstance(key, str):
        return key
    if isinstance(key, bool):
        return "true" if key else "false"
    if key is None:
        return "null"
    if isinstance(key, float):
        return format(key, "g")
    return str(key)


MAX_VALUES = 1_000_000
"""The most values a text may expand to: aliases let a few hundred bytes stand for billions (go-yaml,
and so kubectl, refuses "excessive aliasing" likewise)."""


class ManifestError(InvalidInput):
    """A text that is not YAML; the message says what the parser found and where."""


class _Expansion:
    """`jsonable` with a budget of values and the containers on the current path (an alias to a node
    that contains it would recurse for ever)."""

    def __init__(self) -> None:
        self.left = MAX_VALUES
        self.path: set[int] = set()

    def jsonable(self, value: Any) -> Any:
        """What sigs.k8s.io/yaml hands the API server: string keys all the way down."""
        self.left -= 1
        if self.left < 0:
            raise ManifestError(f"invalid YAML: excessive aliasing (more than {MAX_VALUES:,} values)")
        if not isinstance(value, dict | list):
            return value
        if id(value) in self.path:
            raise ManifestError("invalid YAML: an alias refers to a node that contains it")
        self.path.add(id(value))
        try:
            if isinstance(value, dict):
                return {_json_key(k): self.jsonable(v) for k, v in value.items()}
            return [self.jsonable(v) for v in value]
        finally:
            self.path.discard(id(value))


def load_documents(text: str) -> list[Any]:
    """Every document of a (multi-document) YAML text; raises `ManifestError` on bad YAML."""
    expansion = _Expansion()
    try:
        return [expansion.jsonable(document) for document in yaml.load_all(text, Loader=ManifestLoader)]
    except RecursionError:
        raise ManifestError("invalid YAML: nested too deeply") from None
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" (line {mark.line + 1}, column {mark.column + 1})" if mark is not None else ""
        problem = getattr(exc, "problem", None) or " ".join(line.strip() for line in str(exc).splitlines())
        raise ManifestError(f"invalid YAML: {problem}{where}") from exc
