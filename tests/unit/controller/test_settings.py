"""The operator's flags and their BREAKWATER_* environment fallbacks: a value it cannot run with is
refused at start with one line naming the flag, never a traceback and never silently."""

from __future__ import annotations

import argparse
import os
import subprocess
import sys

import pytest

from breakwater.controller import settings


def parsed(*flags: str) -> settings.OperatorSettings:
    parser = argparse.ArgumentParser()
    settings.add_arguments(parser)
    return settings.from_args(parser.parse_args(["--webhook-manage=none", *flags]))


@pytest.mark.parametrize(
    ("flag", "message"),
    [
        ("--webhook-timeout-seconds=0", "--webhook-timeout-seconds: expected 1 to 30"),
        ("--webhook-timeout-seconds=31", "--webhook-timeout-seconds: expected 1 to 30"),
        ("--stale-after-seconds=-1", "--stale-after-seconds: expected a positive number"),
        ("--stale-after-seconds=nan", "--stale-after-seconds: expected a positive number"),
        ("--webhook-service=ns/name:abc", "--webhook-service: expected a port 1 to 65535"),
        ("--webhook-service=ns/name:70000", "--webhook-service: expected a port 1 to 65535"),
        ("--webhook-service=Bad_NS/name", "--webhook-service: 'Bad_NS' is not a namespace name"),
        ("--webhook-secret=noslash", "--webhook-secret: expected NAMESPACE/NAME"),
        ("--webhook-url=not-a-url", "--webhook-url: expected a https URL with a host"),
        ("--webhook-url=http://127.0.0.1:9443", "--webhook-url: expected a https URL"),
        ("--webhook-url=https://127.0.0.1:99999", "--webhook-url: 'https://127.0.0.1:99999' is not a URL"),
        ("--report-url=ftp://x", "--report-url: expected a https or http URL"),
        ("--namespace=Bad NS", "--namespace: 'Bad NS' is not a namespace name"),
        ("--operator-namespace=Bad NS", "--operator-namespace: 'Bad NS' is not a namespace name"),
        ('--sidecar-resources={"limits":"lots"}', "--sidecar-resources: limits must map resource names"),
        ('--sidecar-resources={"limits":{"memory":"lots"}}', "limits.memory: 'lots' is not a quantity"),
        ('--sidecar-resources={"limits":{"cpu":true}}', "limits.cpu: True is not a quantity"),
        ('--sidecar-resources={"limit":{}}', "--sidecar-resources: unknown field 'limit'"),
        (  # the chart's default limit kept, the request raised: every injected pod would be refused
            '--sidecar-resources={"requests":{"memory":"256Mi"},"limits":{"memory":"128Mi"}}',
            "requests.memory 256Mi is above limits.memory 128Mi",
        ),
        (
            '--sidecar-resources={"requests":{"cpu":"1.5"},"limits":{"cpu":"1200m"}}',
            "requests.cpu 1.5 is above",
        ),
        (
            "--health-listen=0.0.0.0:9443",
            "--webhook-listen and --health-listen must differ: both listen on port 9443",
        ),
        (
            "--metrics-listen=127.0.0.1:9444",
            "--report-listen and --metrics-listen must differ: both listen on port 9444",
        ),
    ],
)
def test_a_flag_the_operator_cannot_run_with_is_refused_by_name(flag: str, message: str) -> None:
    with pytest.raises(settings.SettingsError, match=message.replace("(", r"\(")):
        parsed(flag)


def test_values_the_chart_passes_are_accepted() -> None:
    resources = '{"requests":{"cpu":"20m","memory":"48Mi"},"limits":{"memory":"0.125Gi","cpu":0.5}}'
    got = parsed(
        "--webhook-service=breakwater-system/breakwater-webhook:443",
        "--webhook-secret=breakwater-system/breakwater-webhook-tls",
        "--report-url=https://breakwater-webhook.breakwater-system.svc:9444",
        "--namespace=shop",
        "--sidecar-image-pull-policy=Always",
        f"--sidecar-resources={resources}",
        "--webhook-timeout-seconds=30",
    )
    assert got.sidecar_resources["limits"] == {"memory": "0.125Gi", "cpu": 0.5}
    assert (got.webhook_timeout_seconds, got.sidecar_image_pull_policy) == (30, "Always")


def test_an_environment_choice_argparse_does_not_check_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("BREAKWATER_WEBHOOK_MANAGE", "sometimes")
    parser = argparse.ArgumentParser()
    settings.add_arguments(parser)
    with pytest.raises(settings.SettingsError, match="--webhook-manage: expected one of full, ca-only, none"):
        settings.from_args(parser.parse_args([]))


def _operator(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "breakwater.cli", "operator", *args],
        env={**os.environ, **env},
        capture_output=True,
        text=True,
        timeout=60,
    )


@pytest.mark.parametrize(
    ("variable", "value", "flag"),
    [
        ("BREAKWATER_SIDECAR_ADMIN_PORT", "abc", "--sidecar-admin-port"),
        ("BREAKWATER_LEASE_SECONDS", "ten", "--lease-seconds"),
        ("BREAKWATER_WEBHOOK_TIMEOUT_SECONDS", "5s", "--webhook-timeout-seconds"),
    ],
)
def test_a_bad_environment_value_is_a_usage_error_and_help_still_works(
    variable: str, value: str, flag: str
) -> None:
    run = _operator({variable: value}, "--webhook-manage=none")
    assert run.returncode == 2
    assert f"argument {flag}: invalid" in run.stderr
    assert "Traceback" not in run.stderr
    shown = _operator({variable: value}, "--help")
    assert shown.returncode == 0, shown.stderr
    assert "Traceback" not in shown.stderr


def test_a_bad_flag_ends_the_operator_with_one_line() -> None:
    run = _operator({}, "--webhook-manage=none", "--webhook-timeout-seconds=100")
    assert run.returncode == 2
    assert run.stderr.strip().splitlines() == [
        "breakwater operator: --webhook-timeout-seconds: expected 1 to 30 (the API server's bounds), got 100"
    ]


def test_breakwater_without_a_command_prints_its_usage_and_fails() -> None:
    run = subprocess.run([sys.executable, "-m", "breakwater.cli"], capture_output=True, text=True, timeout=60)
    assert run.returncode == 2
    assert "COMMAND" in run.stderr
    assert run.stdout == ""
