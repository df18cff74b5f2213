"""`breakwater simulate`, `breakwater promote` and the expired-override warning of `validate`."""

from __future__ import annotations

import json
import random
import re
from pathlib import Path

import pytest
import yaml

from breakwater.adaptive.history import History
from breakwater.adaptive.promote_cli import NothingToPromote, promotion_patch
from breakwater.adaptive.shapes import SHAPES
from breakwater.api.policy import parse_spec
from breakwater.cli import main
from breakwater.errors import InvalidInput

POLICY = {
    "apiVersion": "breakwater.dev/v1alpha1",
    "kind": "CircuitBreakerPolicy",
    "metadata": {"name": "payments", "namespace": "shop"},
    "spec": {
        "selector": {"matchLabels": {"app": "checkout"}},
        "upstreams": [{"name": "payments", "host": "127.0.0.1", "port": 8080, "listenPort": 15210}],
        "trip": {"consecutiveFailures": 3, "failureRate": {"percent": 50}},
        "adaptive": {"enabled": True, "historyWindow": "1h"},
    },
}


def write_calls(path: Path) -> None:
    rows = ["time,pod,duration_ms,outcome"]
    rng = random.Random(4)
    for i in range(6000):
        t = i * 0.5
        down = 1200 <= t < 1500
        rows.append(
            f"{t},pod-{i % 3},{2 if down else 80},{'failure' if down or rng.random() < 0.2 else 'success'}"
        )
    path.write_text("\n".join(rows) + "\n")


def test_simulate_replays_a_csv_of_calls_as_written_and_with_tuning(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    (tmp_path / "policy.yaml").write_text(yaml.safe_dump(POLICY))
    write_calls(tmp_path / "calls.csv")
    code = main(
        ["simulate", str(tmp_path / "policy.yaml"), "--history", str(tmp_path / "calls.csv"), "--json"]
    )
    assert code == 0
    report = json.loads(capsys.readouterr().out)
    written, tuned = report["as written"], report["with tuning"]
    assert written["calls"] == tuned["calls"] == 6000
    assert written["trips"] > 0
    assert written["rejectedWhileHealthy"] > 0  # 3 in a row at 20 % failures: false trips
    assert (
        written["failedLetThrough"] + written["rejectedFailing"]
        == tuned["failedLetThrough"] + tuned["rejectedFailing"]
    )


def test_simulate_reads_the_operators_exported_history(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    history = History.for_window(3600)
    for i, minute in enumerate(SHAPES["steady"](random.Random(1))[:60]):
        history.add(
            1_800_000_000 + 60 * i, calls=minute.calls, failures=minute.failures, latency=minute.latency
        )
    record = {"version": 1, "upstreams": {"payments": {"history": history.encode(), "tuner": {}}}}
    exported = {"kind": "ConfigMap", "data": {"payments.json": json.dumps(record)}}
    (tmp_path / "history.json").write_text(json.dumps(exported))
    (tmp_path / "policy.yaml").write_text(yaml.safe_dump(POLICY))
    code = main(
        [
            "simulate",
            str(tmp_path / "policy.yaml"),
            "--history",
            str(tmp_path / "history.json"),
            "--pods",
            "3",
        ]
    )
    out = capsys.readouterr().out
    assert code == 0
    assert "upstream payments: 36" in out  # ~36,000 calls laid out over the hour
    assert "as written" in out
    assert "with tuning" in out


def test_simulate_says_what_is_wrong_with_a_history(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    (tmp_path / "policy.yaml").write_text(yaml.safe_dump(POLICY))
    (tmp_path / "calls.csv").write_text("when,who\n1,2\n")
    assert main(["simulate", str(tmp_path / "policy.yaml"), "--history", str(tmp_path / "calls.csv")]) == 1
    assert "needs the columns" in capsys.readouterr().err


CSV_HEAD = "time,pod,duration_ms,outcome\n"


def _exported(record: object) -> str:
    """A ConfigMap as `kubectl get -o json` prints it, with `record` as the policy's history."""
    return json.dumps({"data": {"payments.json": json.dumps(record)}})


@pytest.mark.parametrize(
    ("history", "message"),
    [
        (CSV_HEAD + "0,a,5\n", "line 2: no value for outcome"),
        (CSV_HEAD + "inf,a,5,success\n", "line 2: time 'inf' is not a finite number of seconds"),
        (CSV_HEAD + "nan,a,5,success\n", "line 2: time 'nan' is not a finite number of seconds"),
        (CSV_HEAD + "0,a,-5,success\n", "line 2: duration_ms '-5' is not a finite number >= 0"),
        (CSV_HEAD + "0,a,5,success\n31536000,a,5,success\n", "the calls span 365.0 days; at most 7 days"),
        ('{"data": {"payments.json": {"upstreams": {}}}}', "data.payments.json: expected a JSON string"),
        ('{"data": {"payments.json": "[1]"}}', "data.payments.json: not a history record"),
        (_exported({"upstreams": {"payments": {}}}), "expected the encoded history"),
        (_exported({"upstreams": {"payments": {"history": 5}}}), "expected the encoded history"),
        ('{"kind": "ConfigMap"}', "the exported history has no data"),
    ],
    ids=["missing-column", "inf-time", "nan-time", "negative-duration", "a-year", "record-object",
         "record-list", "no-history", "history-number", "no-data"],
)  # fmt: skip
def test_simulate_refuses_a_bad_history_in_one_line(
    history: str, message: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Each of these was a traceback or a replay that never ended (a far-off time)."""
    (tmp_path / "policy.yaml").write_text(yaml.safe_dump(POLICY))
    (tmp_path / "history").write_text(history)
    assert main(["simulate", str(tmp_path / "policy.yaml"), "--history", str(tmp_path / "history")]) == 1
    err = capsys.readouterr().err
    assert message in err
    assert "Traceback" not in err


def test_simulate_needs_at_least_one_pod(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "policy.yaml").write_text(yaml.safe_dump(POLICY))
    with pytest.raises(SystemExit) as exited:
        main(["simulate", str(tmp_path / "policy.yaml"), "--history", "h.csv", "--pods", "0"])
    assert exited.value.code == 2
    assert "argument --pods: expected at least 1 pod, got 0" in capsys.readouterr().err


def test_simulate_names_the_upstreams_when_asked_for_one_the_policy_has_not(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    (tmp_path / "policy.yaml").write_text(yaml.safe_dump(POLICY))
    write_calls(tmp_path / "calls.csv")
    policy, calls = str(tmp_path / "policy.yaml"), str(tmp_path / "calls.csv")
    assert main(["simulate", policy, "--history", calls, "--upstream", "ledger"]) == 1
    assert f"{policy} has no upstream 'ledger' (its upstreams: payments)" in capsys.readouterr().err


def with_suggestion(policy: dict[str, object], **suggested: object) -> dict[str, object]:
    return {**policy, "status": {"upstreams": [{"name": "payments", "suggested": suggested}]}}


def test_promote_patches_the_trip_and_open_sections_of_a_single_upstream_policy() -> None:
    patch = promotion_patch(
        with_suggestion(POLICY, consecutiveFailures=8, failureRatePercent=27.0, openDuration="20s")
    )
    assert patch["spec"]["trip"]["consecutiveFailures"] == 8
    assert patch["spec"]["trip"]["failureRate"]["percent"] == 27
    assert "slowCalls" not in patch["spec"]["trip"]  # a rule left off stays off
    assert patch["spec"]["open"]["duration"] == "20s"


def test_promote_puts_a_suggested_successes_to_close_into_half_open_and_the_patch_validates() -> None:
    patch = promotion_patch(with_suggestion(POLICY, successesToClose=1))
    assert patch["spec"]["halfOpen"]["successesToClose"] == 1
    spec = {**POLICY["spec"], **patch["spec"]}  # type: ignore[dict-item]
    assert parse_spec(spec).settings_for("payments").breaker_settings().half_open_successes_to_close == 1


def test_promote_writes_overrides_when_the_policy_has_several_upstreams() -> None:
    spec = dict(POLICY["spec"])  # type: ignore[arg-type]
    spec["upstreams"] = [
        *spec["upstreams"],
        {"name": "fraud", "host": "127.0.0.2", "port": 8080, "listenPort": 15211},
    ]
    patch = promotion_patch(with_suggestion({**POLICY, "spec": spec}, consecutiveFailures=9))
    upstreams = {u["name"]: u for u in patch["spec"]["upstreams"]}
    assert upstreams["payments"]["overrides"]["trip"]["consecutiveFailures"] == 9
    assert "overrides" not in upstreams["fraud"]


def test_promote_refuses_a_policy_without_suggestions() -> None:
    with pytest.raises(NothingToPromote, match="suggested"):
        promotion_patch(POLICY)


def test_promote_leaves_out_a_suggestion_for_an_upstream_no_longer_in_the_spec(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """The status still names an upstream renamed in the spec since (the operator has not rewritten it)."""
    stale = {
        **POLICY,
        "status": {"upstreams": [{"name": "old-payments", "suggested": {"consecutiveFailures": 7}}]},
    }
    with pytest.raises(NothingToPromote, match="suggested"):
        promotion_patch(stale)
    (tmp_path / "policy.json").write_text(json.dumps(stale))
    assert main(["promote", str(tmp_path / "policy.json")]) == 1
    assert "Traceback" not in capsys.readouterr().err


def test_promote_refuses_an_upstream_the_spec_has_not(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    (tmp_path / "policy.json").write_text(json.dumps(with_suggestion(POLICY, consecutiveFailures=8)))
    assert main(["promote", str(tmp_path / "policy.json"), "--upstream", "ledger"]) == 1
    assert "no upstream 'ledger' in spec (its upstreams: payments)" in capsys.readouterr().err


@pytest.mark.parametrize(
    ("suggested", "message"),
    [
        ({"consecutiveFailures": -4}, r"would make the policy invalid.*spec.trip.consecutiveFailures"),
        ({"openDuration": 5}, r"would make the policy invalid.*spec.open.duration"),
        ({"openDuration": "10m"}, r"would make the policy invalid"),  # over maxDuration, 5m
        ({"consecutiveFailures": [1]}, r"suggested.consecutiveFailures: \[1\] is not a number"),
        ({"successesToClose": "abc"}, r"suggested.successesToClose: 'abc' is not a number"),
    ],
)
def test_promote_refuses_a_suggestion_the_api_server_would_refuse(
    suggested: dict[str, object], message: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A status edited by hand or by another tool: the patch printed is always one that applies."""
    policy = with_suggestion(POLICY, **suggested)
    (tmp_path / "policy.json").write_text(json.dumps(policy))
    assert main(["promote", str(tmp_path / "policy.json")]) == 1
    err = capsys.readouterr().err
    assert re.search(message, err), err
    assert "Traceback" not in err


def test_promote_refuses_a_suggestion_that_is_not_a_mapping() -> None:
    policy = {**POLICY, "status": {"upstreams": [{"name": "payments", "suggested": "yes"}]}}
    with pytest.raises(InvalidInput, match="suggested: expected a mapping, got 'yes'"):
        promotion_patch(policy)


def test_validate_warns_about_an_override_that_has_already_ended(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    expired = {
        **POLICY,
        "spec": {
            **POLICY["spec"],
            "override": {"mode": "Observe", "until": "2020-01-01T00:00:00Z", "reason": "old"},
        },
    }  # type: ignore[dict-item]
    path = tmp_path / "policy.yaml"
    path.write_text(yaml.safe_dump(expired))
    assert main(["validate", str(path)]) == 0  # valid: a warning, not an error
    captured = capsys.readouterr()
    assert captured.out.splitlines() == [f"{path}: OK"]
    assert captured.err.splitlines()[0] == (
        f"{path}: warning: spec.override.until: 2020-01-01T00:00:00Z has already passed: "
        "the override would do nothing"
    )


def test_validate_warns_about_a_quorum_in_observe_mode_and_not_in_enforce_mode(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    for mode, warned in (("Observe", True), ("Enforce", False)):
        spec = {**POLICY["spec"], "mode": mode, "coordination": {"quorumPercent": 50}}  # type: ignore[dict-item]
        path = tmp_path / f"{mode}.yaml"
        path.write_text(yaml.safe_dump({**POLICY, "spec": spec}))
        assert main(["validate", str(path)]) == 0  # valid: a warning, not an error
        err = capsys.readouterr().err.splitlines()
        expected = [
            f"{path}: warning: spec.coordination.quorumPercent: Observe mode never rejects a call, so the "
            "quorum does nothing until spec.mode is Enforce"
        ]
        assert err == (expected if warned else [])
