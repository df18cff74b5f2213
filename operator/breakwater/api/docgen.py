"""`breakwater api-docs`: the API reference (Markdown), generated from the same schema as the CRD.

    breakwater api-docs                  print docs/api.md to stdout
    breakwater api-docs --write PATH     write it
    breakwater api-docs --check PATH     exit 1 with a diff when PATH is out of date

Every field with its type, default, constraints and description; every cross-field rule with its
message and CEL; the printer columns; and a complete example policy (examples/full-featured.yaml).
"""

from __future__ import annotations

import argparse
import difflib
import json
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from breakwater.api import rules
from breakwater.api.constants import (
    API_VERSION,
    CATEGORIES,
    KIND,
    MAX_POLICY_NAME_LENGTH,
    MESH_PORT_RANGES,
    PLURAL,
    SHORT_NAMES,
    SIDECAR_ADMIN_PORT,
    SIDECAR_FORWARD_PROXY_PORT,
)
from breakwater.api.crdgen import PRINTER_COLUMNS, openapi_schema
from breakwater.api.durations import MAX_DURATION
from breakwater.api.manifests import ManifestError, load_documents
from breakwater.api.policy import check_policy

__all__ = ["add_arguments", "api_markdown", "run"]

EXAMPLE = Path(__file__).resolve().parents[3] / "examples" / "full-featured.yaml"

_DURATION_RULE = rules.DURATION.to_schema()["rule"]
_TIMESTAMP_RULE = rules.TIMESTAMP.to_schema()["rule"]


def _anchor(path: str) -> str:
    return "".join(ch for ch in path.lower() if ch.isalnum() or ch in "-_")


def _text(text: str) -> str:
    """Prose for Markdown: angle brackets shown, not taken for HTML."""
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


def _cell(text: str) -> str:
    return _text(text).replace("|", "\\|").replace("\n\n", "<br><br>").replace("\n", " ")


def _code(value: Any) -> str:
    text = value if isinstance(value, str) else json.dumps(value, separators=(", ", ": "))
    return f"`{text}`" if text != "" else '`""`'


def _own_rules(schema: dict[str, Any]) -> list[dict[str, str]]:
    return [
        r
        for r in schema.get("x-kubernetes-validations", [])
        if r["rule"] not in (_DURATION_RULE, _TIMESTAMP_RULE)
    ]


def _is_duration(schema: dict[str, Any]) -> bool:
    return any(r["rule"] == _DURATION_RULE for r in schema.get("x-kubernetes-validations", []))


def _is_timestamp(schema: dict[str, Any]) -> bool:
    return any(r["rule"] == _TIMESTAMP_RULE for r in schema.get("x-kubernetes-validations", []))


def _is_object(schema: dict[str, Any]) -> bool:
    return schema.get("type") == "object" and "properties" in schema


def _shape(schema: dict[str, Any]) -> str:
    """What makes two object schemas the same type (descriptions and defaults aside)."""
    keep = {k: v for k, v in schema.items() if k not in ("description", "default")}
    if "properties" in keep:
        keep["properties"] = {k: _shape(v) for k, v in keep["properties"].items()}
    if "items" in keep:
        keep["items"] = _shape(keep["items"])
    return json.dumps(keep, sort_keys=True)


class _Writer:
    def __init__(self) -> None:
        self.lines: list[str] = []
        self.documented: dict[str, str] = {}  # object shape -> path of its section

    def type_of(self, schema: dict[str, Any], path: str) -> str:
        kind = schema.get("type")
        if "enum" in schema:
            return "enum: " + ", ".join(f"`{v}`" for v in schema["enum"])
        if kind == "string":
            if _is_duration(schema):
                return "[duration](#durations)"
            if _is_timestamp(schema):
                return "[timestamp](#timestamps)"
            return "string (date-time)" if schema.get("format") == "date-time" else "string"
        if kind == "array":
            return "[]" + self.type_of(schema["items"], path + "[]")
        if kind == "object":
            if "additionalProperties" in schema:
                return "map[string]" + self.type_of(schema["additionalProperties"], path)
            if "properties" in schema:
                target = self.documented.get(_shape(schema), path)
                return f"[object](#{_anchor(target)})"
            return "object"
        return str(kind)

    def constraints(self, schema: dict[str, Any], required: bool) -> str:
        out: list[str] = ["required"] if required else []
        low, high = schema.get("minimum"), schema.get("maximum")
        if low is not None or high is not None:
            lo = "" if low is None else f"{low} {'<' if schema.get('exclusiveMinimum') else '≤'} "
            hi = "" if high is None else f" {'<' if schema.get('exclusiveMaximum') else '≤'} {high}"
            out.append(f"{lo}x{hi}")
        for key, label in (("minLength", "min length"), ("maxLength", "max length")):
            if key in schema and not (_is_duration(schema) or _is_timestamp(schema)):
                out.append(f"{label} {schema[key]}")
        for key, label in (
            ("minItems", "min items"),
            ("maxItems", "max items"),
            ("maxProperties", "max entries"),
        ):
            if key in schema:
                out.append(f"{label} {schema[key]}")
        if "pattern" in schema:
            out.append(f"pattern `{schema['pattern']}`")
        item = schema.get("items") or schema.get("additionalProperties") or {}
        if isinstance(item, dict):
            if "pattern" in item:
                out.append(f"each matches `{item['pattern']}`")
            if "maxLength" in item and "pattern" not in item:
                out.append(f"each at most {item['maxLength']} characters")
        list_type = schema.get("x-kubernetes-list-type")
        if list_type == "set":
            out.append("unique items")
        elif list_type == "map":
            out.append("unique " + ", ".join(schema.get("x-kubernetes-list-map-keys", [])))
        return "; ".join(out)

    def default(self, schema: dict[str, Any]) -> str:
        if "default" not in schema:
            return ""
        value = schema["default"]
        if isinstance(value, dict) and _is_object(schema):
            children = {k: v["default"] for k, v in schema["properties"].items() if "default" in v}
            if value == children and value:
                return "its fields' defaults"
        return _code(value)

    def section(self, path: str, schema: dict[str, Any], level: int) -> Iterator[tuple[str, dict[str, Any]]]:
        """Write one object's table; yield the nested objects still to document."""
        self.documented.setdefault(_shape(schema), path)
        heading = "#" * min(level, 4)
        self.lines += [f"{heading} {path}", "", f'<a id="{_anchor(path)}"></a>', ""]
        if schema.get("description"):
            self.lines += [_text(schema["description"]), ""]
        required = set(schema.get("required", []))
        rows = ["| Field | Type | Default | Constraints | Description |", "|---|---|---|---|---|"]
        nested: list[tuple[str, dict[str, Any]]] = []
        for name, prop in schema["properties"].items():
            child = prop.get("items", prop) if prop.get("type") == "array" else prop
            suffix = "[]" if prop.get("type") == "array" else ""
            child_path = f"{path}.{name}{suffix}"
            if _is_object(child) and _shape(child) not in self.documented:
                self.documented[_shape(child)] = child_path
                nested.append((child_path, child))
            rows.append(
                "| "
                + " | ".join(
                    [
                        f"`{name}`",
                        self.type_of(prop, child_path),
                        self.default(prop),
                        _cell(self.constraints(prop, name in required)),
                        _cell(prop.get("description", "")),
                    ]
                )
                + " |"
            )
        self.lines += [*rows, ""]
        own = _own_rules(schema)
        if own:
            self.lines += ["Rules (checked by the API server and by `breakwater validate`):", ""]
            for rule in own:
                where = f" (reported at `{rule['fieldPath']}`)" if "fieldPath" in rule else ""
                self.lines.append(f"- {_text(rule['message'])}{where}")
            self.lines.append("")
        if schema.get("x-kubernetes-preserve-unknown-fields"):
            self.lines += ["Fields not listed here are kept as written.", ""]
        yield from nested

    def walk(self, path: str, schema: dict[str, Any], level: int) -> None:
        queue = [(path, schema)]
        while queue:
            current, node = queue.pop(0)
            queue[0:0] = list(self.section(current, node, level))


def api_markdown(example: str) -> str:
    """The whole reference, with `example` (YAML text) as the complete example."""
    schema = openapi_schema()
    spec, status = schema["properties"]["spec"], schema["properties"]["status"]
    w = _Writer()
    w.lines += [
        f"# {KIND} API reference ({API_VERSION})",
        "",
        "<!-- GENERATED by `breakwater api-docs` from operator/breakwater/api/ -- do not edit; "
        "run `make docs`. -->",
        "",
        schema["description"],
        "",
        f"- apiVersion `{API_VERSION}`, kind `{KIND}`, namespaced; plural `{PLURAL}`, short name "
        + ", ".join(f"`{s}`" for s in SHORT_NAMES)
        + ", category "
        + ", ".join(f"`{c}`" for c in CATEGORIES)
        + ".",
        f"- A policy's name has at most {MAX_POLICY_NAME_LENGTH} characters (not Kubernetes' 253): the "
        "operator keeps its sidecar config under the key `<name>.json` of a ConfigMap.",
        "- `kubectl explain cbp.spec.trip.failureRate` shows the same descriptions as this page.",
        "- `breakwater validate [-R] FILE|DIR...` checks manifests offline with the rules the API server "
        "applies (same schema, same cross-field rules, the API server's wording), problems on stderr; exit "
        "code 1 on any problem, a typo in `kind` or `apiVersion` included; YAML is read as kubectl reads "
        "it (go-yaml's scalars; a key given twice in one mapping is an error, as with kubectl's strict "
        "field validation).",
        "- Defaults are applied by the API server: `kubectl get cbp NAME -o yaml` shows every value "
        "in force.",
        "",
        "## Complete example",
        "",
        "Every section, with values a careful team might choose (`examples/full-featured.yaml`; more in "
        "`examples/`):",
        "",
        "```yaml",
        example.rstrip("\n"),
        "```",
        "",
        "## Conventions",
        "",
        '<a id="durations"></a>',
        "",
        "**Durations** are strings of decimal numbers with a unit, as in Kubernetes and Go: `250ms`, `30s`, "
        "`5m`, `1h`, `1m30s`, `1.5s`. Units: `h`, `m`, `s`, `ms`; at most 3 decimals; greater than 0s and at "
        f"most {MAX_DURATION}. Anything else is rejected with: *{rules.DURATION.message}*.",
        "",
        '<a id="timestamps"></a>',
        "",
        "**Timestamps** are RFC 3339 with a time zone: `2030-01-01T12:00:00Z`, `2030-01-01T14:00:00+02:00`.",
        "",
        "**Sections** such as `trip` or `open` are always present (their fields default individually); "
        "optional sections such as `retry` or `bulkhead` are off until written. In "
        "`upstreams[].overrides`, a section replaces the policy's section of the same name as a whole.",
        "",
        '<a id="ports"></a>',
        "",
        f"**Ports.** In every pod it injects, the sidecar binds an admin port ({SIDECAR_ADMIN_PORT}: probes, "
        f"`/stats`, `/metrics`) and a forward-proxy port ({SIDECAR_FORWARD_PROXY_PORT}), outside the ports "
        + " and ".join(f"{mesh} binds ({low}-{high})" for mesh, (low, high) in MESH_PORT_RANGES.items())
        + ". The operator's settings (chart `sidecar.adminPort`, `sidecar.proxyPort`) replace them, a "
        "policy's `spec.sidecar` replaces those for the pods it injects (the oldest selecting policy that "
        "sets `spec.sidecar` decides both); a pod keeps the ports it was created with. A `listenPort` "
        "may not be one of them: the CRD checks `spec.sidecar` and the defaults, the operator its own "
        "settings (`Accepted=False`, reason `ReservedListenPort`). A selected pod whose containers declare a "
        "`listenPort` or a sidecar port, or a meshed pod with one in its mesh's range, is not injected; "
        "`PortConflict=True` names it, as it names a pod injected on ports a `listenPort` now takes, and "
        "a Warning Event `PortConflict` tells each new case.",
        "",
        "## Spec",
        "",
    ]
    w.walk("spec", spec, 3)
    w.lines += ["## Status", ""]
    w.walk("status", status, 3)
    w.lines += [
        "## Printer columns",
        "",
        f"`kubectl get cbp` shows the first {sum(1 for c in PRINTER_COLUMNS if not c.get('priority'))}; "
        "`-o wide` adds the rest.",
        "",
        "| Column | From | Description |",
        "|---|---|---|",
    ]
    for column in PRINTER_COLUMNS:
        description = _cell(str(column.get("description", "")))
        w.lines.append(f"| {column['name'].upper()} | `{column['jsonPath']}` | {description} |")
    w.lines += [
        "",
        "## Cross-field rules",
        "",
        "Published as CEL `x-kubernetes-validations` in the CRD and implemented by the models' validators "
        "from the same table (`breakwater.api.rules`).",
        "",
        "| Rule | Message | CEL |",
        "|---|---|---|",
    ]
    for rule in rules.ALL_RULES:
        cel = " ".join(rule.to_schema()["rule"].split())
        w.lines.append(f"| `{rule.id}` | {_cell(rule.message)} | `{cel.replace('|', chr(92) + '|')}` |")
    w.lines.append("")
    return "\n".join(w.lines)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    group = parser.add_mutually_exclusive_group()
    group.add_argument("--write", metavar="PATH", type=Path, help="write the reference to PATH")
    group.add_argument(
        "--check", metavar="PATH", type=Path, help="exit 1 with a diff when PATH is out of date"
    )
    parser.add_argument(
        "--example",
        metavar="PATH",
        type=Path,
        default=EXAMPLE,
        help="the complete example (default examples/full-featured.yaml of the source tree)",
    )


def run(args: argparse.Namespace) -> int:
    try:
        example = Path(args.example).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        why = getattr(exc, "strerror", None) or exc
        print(f"{args.example}: cannot read the example policy: {why}", file=sys.stderr)
        return 1
    # The reference shows it as a policy that works: one the API server would refuse is not embedded.
    try:
        documents = [d for d in load_documents(example) if d is not None]
    except ManifestError as exc:
        print(f"{args.example}: {exc}", file=sys.stderr)
        return 1
    if len(documents) != 1:
        print(f"{args.example}: expected exactly one CircuitBreakerPolicy", file=sys.stderr)
        return 1
    problems = check_policy(documents[0])
    for problem in problems:
        print(f"{args.example}: {problem}", file=sys.stderr)
    if problems:
        return 1
    text = api_markdown(example)
    if args.write is not None:
        try:
            args.write.parent.mkdir(parents=True, exist_ok=True)
            args.write.write_text(text, encoding="utf-8")
        except OSError as exc:
            print(f"{args.write}: cannot write: {exc.strerror or exc}", file=sys.stderr)
            return 1
        print(f"wrote {args.write}", file=sys.stderr)
        return 0
    if args.check is not None:
        try:
            current = Path(args.check).read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as exc:
            print(f"{args.check}: cannot read: {getattr(exc, 'strerror', None) or exc}", file=sys.stderr)
            return 1
        if current == text:
            return 0
        diff = difflib.unified_diff(
            current.splitlines(keepends=True), text.splitlines(keepends=True), str(args.check), "generated"
        )
        sys.stdout.writelines(diff)
        print(f"{args.check} is out of date: run `make docs`", file=sys.stderr)
        return 1
    sys.stdout.write(text)
    return 0
