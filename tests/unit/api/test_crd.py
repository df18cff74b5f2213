"""The CRD is generated from the models, structural, bounded for CEL, and checked in as generated."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from breakwater.api import API_VERSION, KIND, CircuitBreakerPolicySpec, constants
from breakwater.api.crdgen import crd_manifest, crd_yaml, openapi_schema
from breakwater.api.policy import CircuitBreakerPolicy
from breakwater.api.rules import ALL_RULES
from breakwater.api.schema import unwrap
from breakwater.api.status import CircuitBreakerPolicyStatus
from breakwater.cli import main
from tests.unit.api.invalid_table import REPO

GENERATED = [
    REPO / "crds" / "breakwater.dev_circuitbreakerpolicies.yaml",
    REPO / "charts" / "breakwater" / "files" / "crds" / "breakwater.dev_circuitbreakerpolicies.yaml",
]


def nodes(schema: dict[str, Any], path: str = "") -> Iterator[tuple[str, dict[str, Any]]]:
    yield path, schema
    for name, sub in schema.get("properties", {}).items():
        yield from nodes(sub, f"{path}.{name}")
    if "items" in schema:
        yield from nodes(schema["items"], f"{path}[]")
    if isinstance(schema.get("additionalProperties"), dict):
        yield from nodes(schema["additionalProperties"], f"{path}{{}}")


@pytest.mark.parametrize("path", GENERATED, ids=lambda p: str(p.relative_to(REPO)))
def test_the_checked_in_crd_is_what_the_models_generate(path: Any) -> None:
    assert path.read_text(encoding="utf-8") == crd_yaml(), f"{path} drifted from the models: run `make crds`"


def test_generation_is_deterministic() -> None:
    assert crd_yaml() == crd_yaml()
    assert yaml.safe_load(crd_yaml()) == crd_manifest()


def test_names_come_from_the_constants() -> None:
    crd = crd_manifest()
    names = crd["spec"]["names"]
    assert crd["metadata"]["name"] == constants.CRD_NAME == "circuitbreakerpolicies.breakwater.dev"
    assert (crd["spec"]["group"], names["kind"], names["plural"]) == (
        "breakwater.dev",
        KIND,
        "circuitbreakerpolicies",
    )
    assert names["shortNames"] == ["cbp"]
    assert names["categories"] == ["breakwater"]
    assert crd["spec"]["versions"][0]["name"] == "v1alpha1"
    assert API_VERSION == "breakwater.dev/v1alpha1"
    assert CircuitBreakerPolicy.model_fields["api_version"].default == API_VERSION
    assert CircuitBreakerPolicy.model_fields["kind"].default == KIND


def test_the_status_subresource_and_the_printer_columns_are_there() -> None:
    version = crd_manifest()["spec"]["versions"][0]
    assert version["subresources"] == {"status": {}}
    columns = [
        (c["name"], c["jsonPath"]) for c in version["additionalPrinterColumns"] if not c.get("priority")
    ]
    assert columns == [
        ("State", ".status.summary.state"),
        ("Open", ".status.summary.open"),
        ("Pods", ".status.summary.pods"),
        ("Ready", '.status.conditions[?(@.type=="Ready")].status'),
        ("Mode", ".status.summary.mode"),  # spec.mode would hide an override in force
        ("Age", ".metadata.creationTimestamp"),
    ]
    wide = [c["jsonPath"] for c in version["additionalPrinterColumns"] if c.get("priority")]
    assert ".status.summary.tuning" in wide


def test_the_schema_is_structural() -> None:
    for path, node in nodes(openapi_schema()):
        assert "type" in node or node.get("x-kubernetes-preserve-unknown-fields"), path
        for keyword in ("$ref", "anyOf", "oneOf", "allOf", "nullable", "title", "const"):
            assert keyword not in node, (path, keyword)
        assert node.get("additionalProperties") is not False, path
        if "properties" in node:
            assert "additionalProperties" not in node, path
        if isinstance(node.get("exclusiveMinimum"), bool):
            assert "minimum" in node, path


def test_nothing_in_spec_preserves_unknown_fields() -> None:
    for path, node in nodes(openapi_schema()["properties"]["spec"], "spec"):
        assert "x-kubernetes-preserve-unknown-fields" not in node, path


def test_every_spec_list_string_and_map_is_bounded_for_cel() -> None:
    for path, node in nodes(openapi_schema()["properties"]["spec"], "spec"):
        if node["type"] == "array":
            assert "maxItems" in node, path
        if node["type"] == "string":
            assert "maxLength" in node or "enum" in node, path
        if node["type"] == "object" and "additionalProperties" in node:
            assert "maxProperties" in node, path


def test_every_field_is_described_for_kubectl_explain() -> None:
    for path, node in nodes(openapi_schema()):
        if path.endswith("[]") or path.endswith("{}") or path in (".metadata",):
            continue
        assert node.get("description"), path


def _fields_with_a_described_type(
    raw: dict[str, Any], defs: dict[str, Any], path: str = ""
) -> Iterator[tuple[str, str, str]]:
    """(path, the field's own description, its type's description) of every field of pydantic's
    schema that has both."""
    for name, sub in raw.get("properties", {}).items():
        child = f"{path}.{name}"
        target = next((o for o in sub.get("anyOf", [sub]) if "$ref" in o), None)
        if target is not None:
            type_schema = defs[target["$ref"].rsplit("/", 1)[-1]]
            if sub.get("description") and type_schema.get("description"):
                yield child, sub["description"], type_schema["description"]
            yield from _fields_with_a_described_type(type_schema, defs, child)
        items = sub.get("items")
        if isinstance(items, dict) and "$ref" in items:
            yield from _fields_with_a_described_type(
                defs[items["$ref"].rsplit("/", 1)[-1]], defs, f"{child}[]"
            )


def _node(schema: dict[str, Any], path: str) -> dict[str, Any]:
    node = schema
    for part in path.strip(".").split("."):
        name, many = part.removesuffix("[]"), part.endswith("[]")
        node = node["properties"][name]
        if many:
            node = node["items"]
    return node


def test_each_field_says_what_its_type_says_once() -> None:
    """`kubectl explain`: a field's own words take the place of its type's summary ("When the breaker
    opens." and never then "When a closed breaker opens."); what the type says beyond its summary
    follows once."""
    checked = 0
    for part, model in (("spec", CircuitBreakerPolicySpec), ("status", CircuitBreakerPolicyStatus)):
        raw = model.model_json_schema(by_alias=True, mode="validation")
        generated = openapi_schema()["properties"][part]
        for path, own, shared in _fields_with_a_described_type(raw, raw.get("$defs", {})):
            summary, *details = [unwrap(p) for p in shared.strip().split("\n\n")]
            paragraphs = _node(generated, path)["description"].split("\n\n")
            assert paragraphs == [unwrap(own), *details], f"{part}{path}"
            assert summary not in paragraphs or summary == unwrap(own), f"{part}{path}"
            checked += 1
        for path, node in nodes(generated, part):
            paragraphs = node.get("description", "").split("\n\n")
            assert len(paragraphs) == len(set(paragraphs)), path
    assert checked >= 40  # every field typed by a described model or enum (44 today)


def test_upstreams_are_a_map_list_keyed_by_name() -> None:
    upstreams = openapi_schema()["properties"]["spec"]["properties"]["upstreams"]
    assert upstreams["x-kubernetes-list-type"] == "map"
    assert upstreams["x-kubernetes-list-map-keys"] == ["name"]
    assert upstreams["minItems"] == 1


def test_every_rule_of_the_table_is_published_in_the_crd() -> None:
    published = {
        rule["rule"]
        for _, node in nodes(openapi_schema())
        for rule in node.get("x-kubernetes-validations", [])
    }
    for rule in ALL_RULES:
        assert rule.to_schema()["rule"] in published, rule.id


def test_the_schema_defaults_are_the_model_defaults() -> None:
    """What the API server fills in is exactly what the models assume for a missing field."""
    spec_schema = openapi_schema()["properties"]["spec"]
    minimal = {
        "selector": {"matchLabels": {"app": "x"}},
        "upstreams": [{"name": "u", "host": "u", "port": 80, "listenPort": 15210}],
    }
    defaulted = _apply_defaults(minimal, spec_schema)
    assert defaulted == CircuitBreakerPolicySpec.model_validate(minimal).to_dict()


def _apply_defaults(value: Any, schema: dict[str, Any]) -> Any:
    """Structural defaulting as the API server does it (defaults of objects are used as written)."""
    if schema.get("type") == "object" and isinstance(value, dict):
        out = dict(value)
        for name, sub in schema.get("properties", {}).items():
            if name not in out and "default" in sub:
                out[name] = sub["default"]
            if name in out:
                out[name] = _apply_defaults(out[name], sub)
        return out
    if schema.get("type") == "array" and isinstance(value, list):
        return [_apply_defaults(v, schema["items"]) for v in value]
    return value


@pytest.mark.parametrize(
    "argv",
    [
        ["crd", "--write", "{dir}"],
        ["crd", "--check", "{binary}"],
        ["api-docs", "--write", "{dir}"],
        ["api-docs", "--check", "{binary}"],
        ["api-docs", "--example", "{binary}"],
    ],
    ids=" ".join,
)
def test_the_generators_say_which_file_they_cannot_write_or_read(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], argv: list[str]
) -> None:
    """A directory where a file belongs, or a file that is not UTF-8: one line and exit 1, no traceback."""
    (tmp_path / "binary").write_bytes(b"\xff\xfe")
    paths = {"dir": str(tmp_path), "binary": str(tmp_path / "binary")}
    assert main([arg.format(**paths) for arg in argv]) == 1
    assert capsys.readouterr().err.startswith(f"{paths[argv[-1][1:-1]]}: cannot ")
