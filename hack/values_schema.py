"""Generate charts/breakwater/values.schema.json from the annotated values.yaml (`make chart-schema`).

values.yaml is the one source: each key's default says its type, the comment above it (``# -- ...``)
is its description, and ``# @schema <YAML flow mapping>`` lines add the JSON Schema keywords a default
cannot say (enum, pattern, minimum, items, oneOf...). ``# @schema-def NAME: <mapping>`` at the top
defines a fragment that annotations reuse with ``use: NAME``. Objects with keys are closed
(additionalProperties: false) unless annotated; an empty ``{}`` default is a free-form object.

    python hack/values_schema.py            write the schema
    python hack/values_schema.py --check    exit 1 if the committed schema differs (CI: the drift test)
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from breakwater.api.problems import json_type

ROOT = Path(__file__).resolve().parents[1]
VALUES = ROOT / "charts" / "breakwater" / "values.yaml"
SCHEMA = ROOT / "charts" / "breakwater" / "values.schema.json"

_KEY = re.compile(r"^(?P<indent> *)(?P<key>[^#\s-][^:]*?|\"[^\"]+\"):(?:\s|$)")
_COMMENT = re.compile(r"^\s*#(?P<text>.*)$")


@dataclass
class Annotated:
    """What the comments above one key say."""

    description: list[str] = field(default_factory=list)
    schema: dict[str, Any] = field(default_factory=dict)


def read_annotations(text: str) -> tuple[dict[tuple[str, ...], Annotated], dict[str, Any]]:
    """The annotations of every key path, and the named fragments (``@schema-def``)."""
    found: dict[tuple[str, ...], Annotated] = {}
    fragments: dict[str, Any] = {}
    stack: list[tuple[int, str]] = []
    pending = Annotated()
    for number, line in enumerate(text.splitlines(), start=1):
        comment = _COMMENT.match(line)
        if comment:
            body = comment.group("text").strip()
            if body.startswith("@schema-def "):
                name, _, fragment = body[len("@schema-def ") :].partition(":")
                fragments[name.strip()] = _flow(fragment, number)
            elif body.startswith("@schema "):
                pending.schema.update(_flow(body[len("@schema ") :], number))
            elif body.startswith("-- "):
                pending.description = [body[3:]]
            elif pending.description or not pending.schema:
                pending.description.append(body)
            continue
        if not line.strip():
            if not pending.schema:
                pending = Annotated()  # a comment block separated by a blank line belongs to nothing
            continue
        key = _KEY.match(line)
        if key is None:
            pending = Annotated()  # a list item or a continuation line
            continue
        indent, name = len(key.group("indent")), key.group("key").strip().strip('"')
        while stack and stack[-1][0] >= indent:
            stack.pop()
        stack.append((indent, name))
        found[tuple(n for _, n in stack)] = pending
        pending = Annotated()
    return found, fragments


def _flow(text: str, number: int) -> dict[str, Any]:
    try:
        text = text.strip()
        value = yaml.safe_load(text if text.startswith("{") else "{" + text + "}")
    except yaml.YAMLError as exc:
        raise SystemExit(
            f"values.yaml line {number}: not a YAML flow mapping: {text.strip()} ({exc})"
        ) from exc
    if not isinstance(value, dict):
        raise SystemExit(f"values.yaml line {number}: expected key: value pairs, got {text.strip()}")
    return value


def _expand(schema: dict[str, Any], fragments: dict[str, Any]) -> dict[str, Any]:
    """``use: NAME`` replaced by the fragment, recursively; the annotation's own keys win."""
    out: dict[str, Any] = {}
    name = schema.get("use")
    if name is not None:
        if name not in fragments:
            raise SystemExit(f"values.yaml: @schema use: {name} names no @schema-def")
        out.update(_expand(dict(fragments[name]), fragments))
    for key, value in schema.items():
        if key == "use":
            continue
        out[key] = _expand(value, fragments) if isinstance(value, dict) else value
    return out


def schema_of(
    value: Any, path: tuple[str, ...], notes: dict[tuple[str, ...], Annotated], fragments: dict[str, Any]
) -> dict[str, Any]:
    note = notes.get(path, Annotated())
    extra = _expand(note.schema, fragments)
    node: dict[str, Any] = {}
    if not {"type", "oneOf", "const"} & extra.keys() and (kind := json_type(value)) != "null":
        node["type"] = kind
    if note.description:
        node["description"] = " ".join(" ".join(note.description).split())
    free_form = isinstance(extra.get("additionalProperties"), dict)
    if isinstance(value, dict) and value and not free_form:  # a free-form map's keys are examples
        node["additionalProperties"] = False
        node["properties"] = {
            str(k): schema_of(v, (*path, str(k)), notes, fragments) for k, v in value.items()
        }
    more = extra.pop("properties", {})  # keys with no default of their own (e.g. resources.claims)
    node.update(extra)
    if more:
        node["properties"] = {**node.get("properties", {}), **more}
    return node


def generate() -> str:
    text = VALUES.read_text()
    notes, fragments = read_annotations(text)
    values = yaml.safe_load(text)
    schema: dict[str, Any] = {
        "$schema": "http://json-schema.org/draft-07/schema#",
        "title": "Values of the Breakwater Helm chart (generated from values.yaml: make chart-schema)",
        "type": "object",
        "additionalProperties": False,
        "properties": {
            # Helm hands every chart the parent's `global` values: always allowed.
            "global": {"type": "object", "description": "Values shared with subcharts (Helm's own)."},
            **{key: schema_of(value, (key,), notes, fragments) for key, value in values.items()},
        },
    }
    undescribed = [".".join(p) for p in notes if not notes[p].description]
    if undescribed:
        raise SystemExit(f"values.yaml: keys without a comment above them: {', '.join(undescribed)}")
    return json.dumps(schema, indent=2, ensure_ascii=False) + "\n"


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--check", action="store_true", help="fail if the committed schema differs")
    args = parser.parse_args()
    wanted = generate()
    if args.check:
        if SCHEMA.read_text() != wanted:
            print(
                f"{SCHEMA.relative_to(ROOT)} drifted from values.yaml: run `make chart-schema`",
                file=sys.stderr,
            )
            return 1
        return 0
    SCHEMA.write_text(wanted)
    print(f"wrote {SCHEMA.relative_to(ROOT)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
