"""PUT /config on the real sidecar process, over loopback: refused in an injected pod (whose loopback
every container shares), served to loopback in standalone use (`breakwater proxy --config FILE`)."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
import requests

from breakwater.injection.render import render_bundle
from tests.unit.proxy.helpers import free_port, sidecar_doc, upstream_doc

pytestmark = pytest.mark.timeout(60)

POLICY = {
    "apiVersion": "breakwater.dev/v1alpha1",
    "kind": "CircuitBreakerPolicy",
    "metadata": {"name": "payments", "namespace": "shop", "uid": "u1", "generation": 1},
    "spec": {
        "selector": {"matchLabels": {"app": "checkout"}},
        "upstreams": [{"name": "payments", "host": "127.0.0.1", "port": 9, "listenPort": 15210}],
    },
}


@contextmanager
def sidecar_process(*args: str) -> Iterator[None]:
    """`breakwater proxy ARGS` for the block (terminated, or killed, at its end)."""
    process = subprocess.Popen(
        [sys.executable, "-m", "breakwater.cli", "proxy", *args],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        yield
    finally:
        process.terminate()
        try:
            process.communicate(timeout=15)
        except subprocess.TimeoutExpired:
            process.kill()
            process.communicate()


def wait_ready(admin: str) -> None:
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        try:
            if requests.get(f"{admin}/readyz", timeout=1).status_code == 200:
                return
        except requests.ConnectionError:
            pass
        time.sleep(0.05)
    raise AssertionError("the sidecar never became ready")


def test_an_injected_sidecar_refuses_put_config_even_from_loopback(tmp_path: Path) -> None:
    """The app shares the pod's loopback: a loopback guard would let it rewrite its own breakers. The
    config comes from the policies (the mounted ConfigMap, the operator's report channel) only."""
    policies = tmp_path / "policies"
    policies.mkdir()
    (policies / "payments.json").write_text(render_bundle(POLICY).to_json())
    (tmp_path / "labels").write_text('app="checkout"\n')
    admin_port, proxy_port = free_port(), free_port()
    admin = f"http://127.0.0.1:{admin_port}"
    args = ["--policies-dir", str(policies), "--pod-labels", str(tmp_path / "labels")]
    args += ["--admin-address", "127.0.0.1", "--admin-port", str(admin_port), "--proxy-port", str(proxy_port)]
    with sidecar_process(*args):
        wait_ready(admin)
        running = requests.get(f"{admin}/config", timeout=5)
        assert running.status_code == 200  # reading stays possible, from loopback
        config = running.json()
        assert [u["name"] for u in config["upstreams"]] == ["payments"]
        forged = {**config, "upstreams": [], "configHash": "forged", "generation": 99}
        answer = requests.put(f"{admin}/config", json=forged, timeout=5)
        assert answer.status_code == 403
        assert "edit the CircuitBreakerPolicy" in answer.json()["error"]
        token = requests.put(f"{admin}/config", json=forged, headers={"Authorization": "Bearer x"}, timeout=5)
        assert token.status_code == 403
        stats = requests.get(f"{admin}/stats", timeout=5).json()
        assert stats["configHash"] == config["configHash"]
        assert "payments" in stats["upstreams"]


def test_a_standalone_sidecar_takes_put_config_from_loopback(tmp_path: Path) -> None:
    admin_port = free_port()
    admin = f"http://127.0.0.1:{admin_port}"
    doc = sidecar_doc(upstream_doc("a", free_port()), configHash="file")
    doc["admin"] = {"port": admin_port, "address": "127.0.0.1"}
    config = tmp_path / "sidecar.json"
    config.write_text(json.dumps(doc))
    with sidecar_process("--config", str(config)):
        wait_ready(admin)
        pushed = {**doc, "configHash": "pushed", "generation": 2}
        answer = requests.put(f"{admin}/config", json=pushed, timeout=5)
        assert answer.status_code == 200, answer.text
        assert answer.json() == {"applied": True, "configHash": "pushed", "generation": 2}
        assert requests.get(f"{admin}/stats", timeout=5).json()["configHash"] == "pushed"
