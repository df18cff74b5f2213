"""values.yaml documents every key, and values.schema.json accepts the defaults and rejects bad values
with a message naming the key."""

from __future__ import annotations

import importlib
import json
import re
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.chart import CHART_DIR, REPO, helm_template

VALUES = CHART_DIR / "values.yaml"
SCHEMA = CHART_DIR / "values.schema.json"
# jsonschema ships no type stubs (and the project does not install types-jsonschema).
jsonschema: Any = importlib.import_module("jsonschema")
KEY_LINE = re.compile(r"^(?P<indent>\s*)(?P<key>[A-Za-z0-9_./-]+):(\s|$)")


def _schema() -> dict[str, Any]:
    schema: dict[str, Any] = json.loads(SCHEMA.read_text())
    return schema


def _leaf_paths(value: Any, prefix: tuple[str, ...] = ()) -> Iterator[tuple[str, ...]]:
    if isinstance(value, dict) and value:
        for key, child in value.items():
            yield from _leaf_paths(child, (*prefix, key))
    else:
        yield prefix


def test_every_key_in_values_yaml_has_a_comment_above_it() -> None:
    lines = VALUES.read_text().splitlines()
    undocumented = []
    for number, line in enumerate(lines):
        if not KEY_LINE.match(line):
            continue
        previous = next((p.strip() for p in reversed(lines[:number]) if p.strip()), "")
        if not previous.startswith("#"):
            undocumented.append(f"values.yaml:{number + 1}: {line.strip()}")
    assert not undocumented, "keys without a comment above them:\n" + "\n".join(undocumented)


def test_the_schema_is_generated_from_values_yaml() -> None:
    """values.schema.json is generated (`make chart-schema`): a hand edit, or values.yaml changed
    without regenerating, fails here."""
    script = REPO / "hack" / "values_schema.py"
    proc = subprocess.run(
        [sys.executable, str(script), "--check"], capture_output=True, text=True, check=False
    )
    assert proc.returncode == 0, proc.stderr


def test_the_chart_readme_is_generated_from_values_yaml() -> None:
    """charts/breakwater/README.md is generated (`make chart-schema`) from the same values.yaml and
    parser as the schema: a hand edit, or values.yaml changed without regenerating, fails here."""
    script = REPO / "hack" / "chart_readme.py"
    proc = subprocess.run(
        [sys.executable, str(script), "--check"], capture_output=True, text=True, check=False
    )
    assert proc.returncode == 0, proc.stderr


def test_the_chart_readme_lists_every_value_with_its_default() -> None:
    readme = (CHART_DIR / "README.md").read_text()
    values = yaml.safe_load(VALUES.read_text())
    schema = _schema()
    missing = []
    for path in _leaf_paths(values):
        # A row per value a user sets: the leaf itself, or the free-form map or list that holds it.
        for depth in range(len(path), 0, -1):
            if f"| `{'.'.join(path[:depth])}` |" in readme:
                break
        else:
            missing.append(".".join(path))
    assert not missing, f"values missing from the chart README: {missing}"
    assert "| `rbac.aggregateToDefaultRoles` | boolean | `true` |" in readme
    assert schema["properties"]["image"]["properties"]["pullPolicy"]["enum"] == [
        "Always",
        "IfNotPresent",
        "Never",
    ]
    assert '| `image.pullPolicy` | one of `Always`, `IfNotPresent`, `Never` | `"IfNotPresent"` |' in readme


def test_the_schema_is_valid_draft_07_and_accepts_the_defaults() -> None:
    schema = _schema()
    jsonschema.Draft7Validator.check_schema(schema)
    jsonschema.Draft7Validator(schema).validate(yaml.safe_load(VALUES.read_text()))


def test_every_value_in_values_yaml_is_described_by_the_schema() -> None:
    """Catches a key added to values.yaml but forgotten in the schema (or renamed in only one)."""
    schema = _schema()
    missing = []
    for path in _leaf_paths(yaml.safe_load(VALUES.read_text())):
        node = schema
        for key in path:
            props = node.get("properties", {})
            if key in props:
                node = props[key]
            elif isinstance(node.get("additionalProperties"), dict):
                node = node["additionalProperties"]
            else:
                missing.append(".".join(path))
                break
        else:
            if "description" not in node and not {"oneOf", "const"} & node.keys():
                missing.append(".".join(path) + " (no description)")
    assert not missing, f"values.yaml keys the schema does not describe: {missing}"


REJECTED: dict[str, tuple[list[str], str]] = {
    "unknown failure policy": (["webhook.failurePolicy=Sometimes"], "/webhook/failurePolicy"),
    "timeout beyond the API server's 30 s": (["webhook.timeoutSeconds=31"], "/webhook/timeoutSeconds"),
    "zero timeout": (["webhook.timeoutSeconds=0"], "/webhook/timeoutSeconds"),
    "a liveness probe needing several successes": (
        ["livenessProbe.successThreshold=3"],
        "/livenessProbe/successThreshold",
    ),
    "more replicas than the chart supports": (["replicaCount=11"], "/replicaCount"),
    "an unknown anti-affinity": (["podAntiAffinity=always"], "/podAntiAffinity"),
    "a typo in a top-level key": (["webhok.failurePolicy=Fail"], "webhok"),
    "a Localhost seccomp profile without its file": (
        ["podSecurityContext.seccompProfile.type=Localhost"],
        "/podSecurityContext/seccompProfile",
    ),
    "a container running as root": (
        ["containerSecurityContext.runAsUser=0"],
        "/containerSecurityContext/runAsUser",
    ),
    "a name override that is no DNS label": (["nameOverride=Bad_Name"], "/nameOverride"),
    "a full name a Service cannot have": (["fullnameOverride=9bw"], "/fullnameOverride"),
    "a typo in a nested key": (["webhook.certManager.enable=true"], "enable"),
    "a digest that is not sha256": (["image.digest=latest"], "/image/digest"),
    "a tag with a space": (["image.tag=a b"], "/image/tag"),
    "a repository with its tag": (["image.repository=reg.example/bw:1.0"], "/image/repository"),
    "a sidecar repository in capitals": (
        ["sidecar.image.repository=Reg.example/BW"],
        "/sidecar/image/repository",
    ),
    "an unknown pull policy": (["image.pullPolicy=Sometimes"], "/image/pullPolicy"),
    "a privileged port the non-root image cannot bind": (["ports.webhook=443"], "/ports/webhook"),
    "privilege escalation": (
        ["containerSecurityContext.allowPrivilegeEscalation=true"],
        "allowPrivilegeEscalation",
    ),
    "running as root": (["podSecurityContext.runAsNonRoot=false"], "runAsNonRoot"),
    "an unconfined seccomp profile": (
        ["podSecurityContext.seccompProfile.type=Unconfined"],
        "seccompProfile",
    ),
    "a memory limit that is not a quantity": (["sidecar.resources.limits.memory=lots"], "/sidecar/resources"),
    "an issuer of an unknown kind": (
        [
            "webhook.certManager.enabled=true",
            "webhook.certManager.issuerRef.name=x",
            "webhook.certManager.issuerRef.kind=Vault",
        ],
        "/webhook/certManager/issuerRef/kind",
    ),
    "an issuer without a name": (["webhook.certManager.issuerRef.kind=ClusterIssuer"], "name"),
    "a certificate lifetime that is not a duration": (["webhook.certManager.duration=90days"], "duration"),
    "a scrape interval that is not a duration": (["podMonitor.interval=often"], "/podMonitor/interval"),
    "a watched namespace that is not a name": (
        ["operator.watchNamespaces={Shop_1}"],
        "/operator/watchNamespaces",
    ),
    "a boolean that is a string": (["crds.install=maybe"], "/crds/install"),
    "an unknown service type": (["service.type=ExternalName"], "/service/type"),
}


@pytest.mark.parametrize(("set_values", "names"), REJECTED.values(), ids=REJECTED.keys())
def test_the_schema_rejects_a_bad_value_naming_the_key(
    helm: Path, chart: Path, set_values: list[str], names: str
) -> None:
    proc = helm_template(helm, chart, set_values=set_values)
    assert proc.returncode != 0, f"accepted: {set_values}"
    assert "values don't meet the specifications of the schema" in proc.stderr, proc.stderr
    assert names in proc.stderr, proc.stderr


def test_the_schema_accepts_a_percentage_budget_and_an_existing_issuer(helm: Path, chart: Path) -> None:
    proc = helm_template(
        helm,
        chart,
        set_values=[
            "podDisruptionBudget.maxUnavailable=50%",
            "webhook.certManager.enabled=true",
            "webhook.certManager.issuerRef.name=corp-ca",
            "webhook.certManager.issuerRef.kind=ClusterIssuer",
        ],
        api_versions=["cert-manager.io/v1"],
    )
    assert proc.returncode == 0, proc.stderr
