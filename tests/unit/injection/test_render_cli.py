"""`breakwater render-config`: the sidecar config of a pod's labels, or one line per reason it cannot be."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from breakwater.api.plain.parse import parse_sidecar_config
from breakwater.cli import main
from tests.unit.api.invalid_table import REPO

MINIMAL = (REPO / "examples" / "minimal.yaml").read_text()
DEPLOYMENT = "apiVersion: apps/v1\nkind: Deployment\nmetadata: {name: checkout}\n"


def render(
    tmp_path: Path, text: str, *flags: str, capsys: pytest.CaptureFixture[str]
) -> tuple[int, str, str]:
    path = tmp_path / "policies.yaml"
    path.write_text(text)
    code = main(["render-config", str(path), *flags])
    printed = capsys.readouterr()
    return code, printed.out, printed.err


def test_the_config_of_a_selected_pod_is_what_the_sidecar_loads(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Other kinds in the file are passed over: a policy often travels with its Deployment."""
    code, out, err = render(tmp_path, f"{DEPLOYMENT}---\n{MINIMAL}", "--labels=app=checkout", capsys=capsys)
    assert (code, err) == (0, "")
    config = parse_sidecar_config(json.loads(out), source="render-config")
    assert [(u.name, u.listen_port) for u in config.upstreams] == [("payments", 15210)]


@pytest.mark.parametrize(
    ("text", "message"),
    [
        (
            MINIMAL.replace("kind: CircuitBreakerPolicy", "kind: CircuitbreakerPolicy"),
            "(document 2): kind: no kind 'CircuitbreakerPolicy' in breakwater.dev: did you mean",
        ),
        (MINIMAL.replace("metadata:\n  name: payments", "metadata: notamap"), "metadata: Required value"),
        (MINIMAL.replace("port: 8080", "port: 99999"), "spec.upstreams[0].port: Invalid value: 99999"),
    ],
    ids=["kind-typo", "metadata-not-a-mapping", "bad-port"],
)
def test_a_policy_the_api_server_would_refuse_is_not_rendered(
    text: str, message: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A typo in kind used to be skipped (an empty config, exit 0); a metadata string, a traceback."""
    code, out, err = render(tmp_path, f"{DEPLOYMENT}---\n{text}", "--labels=app=checkout", capsys=capsys)
    assert code == 1
    assert out == ""
    assert message in err
    assert "Traceback" not in err


@pytest.mark.parametrize(
    ("flag", "message"),
    [
        ("--labels=app=checkout,app=web", "--labels: 'app' given twice"),
        ("--namespace=Bad NS", "--namespace: 'Bad NS' is not a namespace name"),
    ],
)
def test_bad_flags_are_refused(
    flag: str, message: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code, out, err = render(tmp_path, MINIMAL, flag, capsys=capsys)
    assert (code, out) == (2, "")
    assert message in err
