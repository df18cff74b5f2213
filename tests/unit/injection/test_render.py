"""Policies render into exactly the config the sidecar loads: one schema, end to end."""

from __future__ import annotations

import json
import subprocess
import sys
import time
import urllib.request
from pathlib import Path
from typing import Any

import pytest
import yaml

from breakwater.api.sidecar import parse_sidecar_config
from breakwater.injection.render import RenderError, render_bundle
from breakwater.injection.resolve import resolve
from breakwater.testing.controlplane import free_port

EXAMPLES = sorted((Path(__file__).parents[3] / "examples").glob("*.yaml"))


def policies(path: Path) -> list[dict[str, Any]]:
    docs = [d for d in yaml.safe_load_all(path.read_text()) if d and d.get("kind") == "CircuitBreakerPolicy"]
    for i, doc in enumerate(docs):
        doc["metadata"].setdefault("namespace", "shop")
        doc["metadata"]["creationTimestamp"] = f"2026-01-01T00:00:0{i}Z"
    return docs


def labels_for(doc: dict[str, Any]) -> dict[str, str]:
    selector = doc["spec"]["selector"]
    labels = dict(selector.get("matchLabels") or {})
    for expr in selector.get("matchExpressions") or ():
        if expr["operator"] in {"In"}:
            labels[expr["key"]] = expr["values"][0]
        elif expr["operator"] == "Exists":
            labels[expr["key"]] = "yes"
    return labels


@pytest.mark.parametrize("example", EXAMPLES, ids=lambda p: p.stem)
def test_every_example_renders_to_a_config_the_sidecar_schema_accepts_unchanged(example: Path) -> None:
    docs = policies(example)
    assert docs, f"{example} holds no policy"
    bundles = [render_bundle(doc) for doc in docs]
    resolution = resolve(labels_for(docs[0]), bundles)
    assert resolution.policies
    text = resolution.config.model_dump_json(by_alias=True)
    loaded = parse_sidecar_config(text, source=example.name)
    assert loaded == resolution.config
    assert json.loads(loaded.model_dump_json(by_alias=True)) == json.loads(text)


def test_per_upstream_overrides_replace_the_policy_sections() -> None:
    doc = {
        "metadata": {"name": "p", "namespace": "shop"},
        "spec": {
            "selector": {"matchLabels": {"app": "a"}},
            "timeout": "2s",
            "trip": {"consecutiveFailures": 5},
            "upstreams": [
                {"name": "fast", "host": "fast.shop", "port": 80, "listenPort": 15210},
                {
                    "name": "slow",
                    "host": "slow.shop",
                    "port": 80,
                    "listenPort": 15211,
                    "overrides": {"timeout": "10s", "trip": {"consecutiveFailures": 2}},
                },
            ],
        },
    }
    bundle = render_bundle(doc)
    fast, slow = bundle.upstreams
    assert (fast.timeout_seconds, fast.breaker.consecutive_failures) == (2.0, 5)
    assert (slow.timeout_seconds, slow.breaker.consecutive_failures) == (10.0, 2)


def test_an_expired_override_no_longer_applies() -> None:
    spec = {
        "selector": {"matchLabels": {"app": "a"}},
        "upstreams": [{"name": "u", "host": "u.shop", "port": 80, "listenPort": 15210}],
        "override": {"mode": "ForceOpen", "until": "2000-01-01T00:00:00Z", "reason": "INC-1"},
    }
    assert render_bundle({"metadata": {"name": "p"}, "spec": spec}).upstreams[0].mode == "Enforce"
    spec["override"]["until"] = "2999-01-01T00:00:00Z"  # type: ignore[index]
    assert render_bundle({"metadata": {"name": "p"}, "spec": spec}).upstreams[0].mode == "ForceOpen"


def test_a_spec_the_models_reject_is_a_render_error_naming_the_field() -> None:
    with pytest.raises(RenderError, match=r"spec\.upstreams"):
        render_bundle({"metadata": {"name": "p"}, "spec": {"selector": {}, "upstreams": []}})


def test_breakwater_proxy_runs_the_rendered_config_and_reports_its_hash(tmp_path: Path) -> None:
    docs = policies(EXAMPLES[0])
    resolution = resolve(labels_for(docs[0]), [render_bundle(d) for d in docs])
    admin = free_port()
    config = json.loads(resolution.config.model_dump_json(by_alias=True))
    config["admin"] = {"port": admin, "address": "127.0.0.1"}
    for upstream in config["upstreams"]:
        upstream["listenPort"] = free_port()
    path = tmp_path / "sidecar.json"
    path.write_text(json.dumps(config))
    proc = subprocess.Popen(
        [sys.executable, "-m", "breakwater.cli", "proxy", "--config", str(path)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + 20
        stats: dict[str, Any] = {}
        while time.monotonic() < deadline:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{admin}/stats", timeout=1) as resp:
                    stats = json.loads(resp.read())
                    break
            except OSError:
                time.sleep(0.1)
        assert stats.get("configHash") == resolution.config_hash
    finally:
        proc.terminate()
        proc.wait(15)
