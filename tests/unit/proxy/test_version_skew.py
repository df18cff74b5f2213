"""Sidecar version skew: what a sidecar of one version does with documents of an operator of another.

Pods keep the sidecar they were admitted with; a new operator injects its own sidecar only into pods
created after the upgrade. So after `helm upgrade` old sidecars read what the new operator writes: the
bundles of the namespace's ConfigMap (mounted; read at start and on every change) and the config
replies of the report channel, and the new operator reads old sidecars' reports.

These tests pin the behaviour docs/install.md ("Upgrading: sidecar version skew") describes, and the
fields of version 1 of the formats an older sidecar reads (tests/unit/proxy/data/wire_v1.json): a
change to them fails here, because sidecars already running refuse a field they do not know.
Regenerate the file only together with that note and the CHANGELOG:
`python -m tests.unit.proxy.test_version_skew`.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from pydantic import BaseModel, ValidationError

from breakwater.api.bundle import BUNDLE_VERSION, PolicyBundle
from breakwater.api.report import REPORT_VERSION, ConfigReply, SidecarReport
from breakwater.api.sidecar import SIDECAR_CONFIG_VERSION, SidecarConfig
from breakwater.injection.render import render_bundle
from breakwater.proxy.podsource import Binding, PodConfigSource

WIRE_V1 = Path(__file__).parent / "data" / "wire_v1.json"
# What an older sidecar reads from a newer operator, and what a newer operator reads from it.
FORMATS: dict[str, type[BaseModel]] = {
    "PolicyBundle": PolicyBundle,
    "ConfigReply": ConfigReply,
    "SidecarReport": SidecarReport,
}
POLICY = {
    "apiVersion": "breakwater.dev/v1alpha1",
    "kind": "CircuitBreakerPolicy",
    "metadata": {"name": "payments", "namespace": "shop", "uid": "u1", "generation": 1},
    "spec": {
        "selector": {"matchLabels": {"app": "checkout"}},
        "upstreams": [{"name": "payments", "host": "payments.shop.svc", "port": 8080, "listenPort": 16001}],
    },
}


def _fields(schema: dict[str, Any], node: dict[str, Any], prefix: str = "") -> list[str]:
    """Every field path of a JSON schema (by alias), following $refs, list items and unions."""
    if "$ref" in node:
        node = schema["$defs"][node["$ref"].rpartition("/")[2]]
    paths: list[str] = []
    for option in node.get("anyOf", []) + node.get("oneOf", []) + node.get("allOf", []):
        paths += _fields(schema, option, prefix)
    if isinstance(node.get("items"), dict):
        paths += _fields(schema, node["items"], f"{prefix}[]")
    if isinstance(node.get("additionalProperties"), dict):
        paths += _fields(schema, node["additionalProperties"], f"{prefix}{{}}")
    for name, child in node.get("properties", {}).items():
        path = f"{prefix}.{name}" if prefix else name
        paths.append(path)
        paths += _fields(schema, child, path)
    return paths


def wire_fields() -> dict[str, list[str]]:
    fields = {}
    for name, model in FORMATS.items():
        schema = model.model_json_schema(by_alias=True)
        fields[name] = sorted(set(_fields(schema, schema)))
    return fields


def test_the_version_1_formats_are_unchanged() -> None:
    assert (BUNDLE_VERSION, SIDECAR_CONFIG_VERSION, REPORT_VERSION) == (1, 1, 1)
    assert wire_fields() == json.loads(WIRE_V1.read_text()), (
        "a field of a format sidecars read changed: sidecars already running refuse fields they do "
        "not know (see docs/install.md, 'Upgrading: sidecar version skew'). Say in the upgrade notes "
        "and CHANGELOG what old sidecars do, then regenerate: python -m tests.unit.proxy.test_version_skew"
    )


def test_reports_cross_versions_both_ways() -> None:
    """A newer sidecar's report to an older operator, and an older sidecar's to a newer one: unknown
    fields are dropped and missing ones take their defaults."""
    report = SidecarReport.model_validate_json(
        json.dumps(
            {
                "namespace": "shop",
                "pod": "checkout-1",
                "fromTheFuture": 1,
                "upstreams": [{"name": "payments", "state": "Closed", "alsoNew": True}],
            }
        )
    )
    assert report.upstreams[0].name == "payments"
    assert report.version == REPORT_VERSION
    reply = ConfigReply.model_validate_json('{"configHash": "abc", "fromTheFuture": 1}')
    assert reply.config_hash == "abc"


def test_a_new_enum_value_in_a_report_is_refused_by_an_older_operator() -> None:
    """Enums are closed: a breaker state or mode an older operator does not know makes the whole
    report invalid (dropped and counted as rejected), so a new state needs the operator upgraded first."""
    with pytest.raises(ValidationError, match="state"):
        SidecarReport.model_validate_json(
            json.dumps(
                {"namespace": "shop", "pod": "checkout-1", "upstreams": [{"name": "p", "state": "Forced"}]}
            )
        )


def _pod_source(tmp_path: Path, bundle_json: str) -> PodConfigSource:
    policies = tmp_path / "policies"
    policies.mkdir()
    (policies / "payments.json").write_text(bundle_json)
    labels = tmp_path / "labels"
    labels.write_text('app="checkout"\n')
    return PodConfigSource(policies, labels, Binding())


def test_a_sidecar_reads_the_bundles_this_operator_writes(tmp_path: Path) -> None:
    config = _pod_source(tmp_path, render_bundle(POLICY).to_json()).load()
    assert [u.name for u in config.upstreams] == ["payments"]


def test_an_older_sidecar_drops_a_bundle_with_a_field_it_does_not_know(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """Today's behaviour, which the upgrade notes warn about: a bundle of a newer format is skipped
    with a warning, so the sidecar resolves its config without that policy."""
    bundle = json.loads(render_bundle(POLICY).to_json())
    bundle["upstreams"][0]["newSetting"] = 1
    config = _pod_source(tmp_path, json.dumps(bundle)).load()
    assert not config.upstreams
    assert "skipping an unreadable policy bundle: payments.json" in caplog.text


def test_a_sidecar_reads_a_bundle_with_a_top_level_field_it_does_not_know(tmp_path: Path) -> None:
    """From this version on, what a newer operator adds beside a bundle's upstreams (as spec.sidecar
    added adminPort and proxyPort) is ignored by the sidecars already running, not a reason to drop
    the policy."""
    bundle = json.loads(render_bundle(POLICY).to_json())
    bundle["fromTheFuture"] = {"x": 1}
    config = _pod_source(tmp_path, json.dumps(bundle)).load()
    assert [u.name for u in config.upstreams] == ["payments"]


def test_a_bundle_without_spec_sidecar_is_written_as_before() -> None:
    """The ports appear in a bundle only when the policy sets them: other bundles are unchanged."""
    assert "adminPort" not in render_bundle(POLICY).to_json()
    with_ports = {**POLICY, "spec": {**POLICY["spec"], "sidecar": {"adminPort": 16020}}}
    assert json.loads(render_bundle(with_ports).to_json())["adminPort"] == 16020


def test_an_older_sidecar_refuses_a_config_reply_with_a_field_it_does_not_know() -> None:
    """The live config of the report channel: the reply is refused (the reporter logs it, keeps the
    running config and retries on the next answer)."""
    config = json.loads(SidecarConfig().model_dump_json(by_alias=True))
    config["newSetting"] = 1
    with pytest.raises(ValueError, match="newSetting"):
        ConfigReply.model_validate_json(json.dumps({"configHash": "abc", "config": config}))


if __name__ == "__main__":
    WIRE_V1.parent.mkdir(exist_ok=True)
    WIRE_V1.write_text(json.dumps(wire_fields(), indent=1) + "\n")
    print(f"wrote {WIRE_V1}")
