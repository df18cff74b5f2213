"""NOTES.txt tells the user how to opt a namespace in and apply a first policy."""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

import yaml

from breakwater.api.policy import check_policy
from tests.chart import render

# `helm template` does not print NOTES.txt; this template, added to a copy of the chart, renders it
# into a ConfigMap with the same values.
PROBE = """\
apiVersion: v1
kind: ConfigMap
metadata:
  name: notes-probe
data:
  notes: {{ include "breakwater/templates/NOTES.txt" . | quote }}
"""


def _notes(helm: Path, chart: Path, tmp_path: Path, values: dict[str, Any] | None = None) -> str:
    probed = tmp_path / "breakwater"
    shutil.copytree(chart, probed)
    (probed / "templates" / "zz-notes-probe.yaml").write_text(PROBE)
    notes: str = render(helm, probed, values=values).one("ConfigMap", "notes-probe")["data"]["notes"]
    return notes


def _policy_example(notes: str) -> dict[str, Any]:
    block = notes.split("<<'YAML'\n", 1)[1].split("\n   YAML", 1)[0]
    policy: dict[str, Any] = yaml.safe_load(
        "\n".join(line.removeprefix("   ") for line in block.splitlines())
    )
    return policy


def test_the_notes_say_how_to_opt_a_namespace_in_and_apply_a_first_policy(
    helm: Path, chart: Path, tmp_path: Path
) -> None:
    notes = _notes(helm, chart, tmp_path)
    assert "kubectl label namespace <your-namespace> breakwater.dev/injection=enabled" in notes
    assert "kubectl get cbp" in notes
    policy = _policy_example(notes)
    assert policy["apiVersion"] == "breakwater.dev/v1alpha1"
    assert policy["kind"] == "CircuitBreakerPolicy"
    assert policy["spec"]["selector"] == {"matchLabels": {"app": "checkout"}}
    policy["metadata"]["namespace"] = "shop"
    policy["spec"]["upstreams"][0]["host"] = "payments.shop.svc.cluster.local"
    assert check_policy(policy) == [], "the first policy in the notes must be one the API accepts"
    assert "failurePolicy is Ignore" in notes


def test_the_notes_follow_the_values(helm: Path, chart: Path, tmp_path: Path) -> None:
    notes = _notes(
        helm,
        chart,
        tmp_path,
        {"webhook": {"injectAllNamespaces": True, "failurePolicy": "Fail"}, "replicaCount": 0},
    )
    assert "kubectl label namespace" not in notes
    assert "not needed: injectAllNamespaces is on" in notes
    assert "pod creation in selected namespaces FAILS" in notes
    assert "WARNING: replicaCount is 0" in notes


def test_the_notes_warn_when_a_down_operator_would_block_every_namespace(
    helm: Path, chart: Path, tmp_path: Path
) -> None:
    """With Fail and every namespace, an operator that cannot come back (its certificate issuer or the
    CNI down too) blocks the pods the cluster needs to recover: the user is told which to exclude."""
    webhook = {"injectAllNamespaces": True, "failurePolicy": "Fail", "excludeNamespaces": ["cert-manager"]}
    notes = _notes(helm, chart, tmp_path, {"webhook": webhook})
    assert "WARNING: injectAllNamespaces with failurePolicy Fail" in notes
    assert "kube-node-lease, breakwater-system, cert-manager." in notes.replace("\n", " ")
    (tmp_path / "labelled").mkdir()
    only_labelled = _notes(helm, chart, tmp_path / "labelled", {"webhook": {"failurePolicy": "Fail"}})
    assert "WARNING: injectAllNamespaces" not in only_labelled
