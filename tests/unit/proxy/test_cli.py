"""`breakwater proxy --config FILE` as a process: JSON logs, a line per transition, SIGTERM drains."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import requests

from tests.unit.proxy.helpers import free_port, sidecar_doc, upstream_doc

pytestmark = pytest.mark.timeout(60)


def _wait_ready(url: str, process: subprocess.Popen[str], deadline: float) -> None:
    while time.monotonic() < deadline:
        assert process.poll() is None, "the sidecar exited early"
        try:
            if requests.get(url, timeout=1).status_code == 200:
                return
        except requests.ConnectionError:
            pass
        time.sleep(0.05)
    raise AssertionError("the sidecar never became ready")


def test_the_cli_serves_logs_json_lines_and_drains_on_sigterm(tmp_path: Path) -> None:
    admin, listen, dead = free_port(), free_port(), free_port()
    config = tmp_path / "sidecar.json"
    doc = sidecar_doc(
        upstream_doc("up", dead, listenPort=listen, breaker={"consecutiveFailures": 1, "openSeconds": 30}),
        configHash="cli",
    )
    doc["admin"] = {"port": admin, "address": "127.0.0.1"}
    config.write_text(json.dumps(doc))
    command = [sys.executable, "-m", "breakwater.cli", "proxy", "--config", str(config)]
    command += ["--log-format", "json", "--drain-seconds", "1"]
    process = subprocess.Popen(
        command,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        _wait_ready(f"http://127.0.0.1:{admin}/readyz", process, time.monotonic() + 20)
        with requests.Session() as session:
            session.trust_env = False
            first = session.get(f"http://127.0.0.1:{listen}/x", timeout=5)
            second = session.get(f"http://127.0.0.1:{listen}/x", timeout=5)
        assert (first.status_code, first.headers["x-breakwater"]) == (502, "connect-error")
        assert (second.status_code, second.headers["x-breakwater"]) == (503, "open")
        started = time.monotonic()
        process.send_signal(signal.SIGTERM)
        _, stderr = process.communicate(timeout=15)
        assert process.returncode == 0
        assert time.monotonic() - started < 5
    finally:
        if process.poll() is None:
            process.kill()
            process.communicate()
    lines = [json.loads(line) for line in stderr.splitlines() if line.startswith("{")]
    assert lines, stderr
    assert all({"ts", "level", "logger", "msg"} <= set(line) for line in lines)
    transitions = [line for line in lines if line.get("event") == "transition"]
    assert len(transitions) == 1
    assert transitions[0]["logger"] == "breakwater.proxy.transitions"
    assert (transitions[0]["upstream"], transitions[0]["to"]) == ("up", "Open")
    assert any(line["msg"] == "config applied" and line["config_hash"] == "cli" for line in lines)
    assert any(line["msg"] == "sidecar stopped" for line in lines)


@pytest.mark.parametrize(
    ("flag", "message"),
    [
        ("--admin-port=70000", "argument --admin-port: expected a port 1 to 65535, got 70000"),
        ("--admin-address=garbage", "argument --admin-address: expected an IP address, got 'garbage'"),
        ("--listen-address=localhost", "argument --listen-address: expected an IP address"),
        ("--poll-seconds=0", "argument --poll-seconds: expected a positive number of seconds"),
        ("--poll-seconds=nan", "argument --poll-seconds: expected a positive number of seconds"),
        ("--drain-seconds=-5", "argument --drain-seconds: expected a number of seconds"),
        ("--report-interval=inf", "argument --report-interval: expected a positive number of seconds"),
    ],
)
def test_a_flag_the_sidecar_cannot_run_with_is_a_usage_error(flag: str, message: str) -> None:
    """Before, --admin-port 70000 bound port 4464 (uvloop wraps it) and --poll-seconds 0 spun a core."""
    run = subprocess.run(
        [sys.executable, "-m", "breakwater.cli", "proxy", "--policies-dir=/nonexistent", flag],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert run.returncode == 2
    assert message in run.stderr
    assert "Traceback" not in run.stderr


def test_injected_mode_flags_with_a_config_file_are_refused_not_ignored(tmp_path: Path) -> None:
    """With --config the file's admin block decides: --admin-port was accepted and did nothing."""
    config = tmp_path / "sidecar.json"
    config.write_text(json.dumps(sidecar_doc()))
    run = subprocess.run(
        [sys.executable, "-m", "breakwater.cli", "proxy", "--config", str(config), "--admin-port=39111"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert run.returncode == 2
    assert "--admin-port only with --policies-dir: with --config, the file decides" in run.stdout + run.stderr
