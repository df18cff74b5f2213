"""Every invalid manifest of the shared table is rejected by `breakwater validate`, naming the field."""

from __future__ import annotations

import argparse
from pathlib import Path

import pytest

from breakwater.api import check_policy
from breakwater.api.rules import ALL_RULES
from breakwater.api.validate import run
from tests.unit.api.invalid_table import CASES, InvalidCase, base_manifest

RULES = {rule.id: rule for rule in ALL_RULES}


def validate(path: Path, capsys: pytest.CaptureFixture[str]) -> tuple[int, str]:
    code = run(argparse.Namespace(files=[str(path)], recursive=False))
    printed = capsys.readouterr()
    return code, printed.out + printed.err


def test_the_table_is_large_enough_to_mean_something() -> None:
    assert len(CASES) >= 30
    assert len({case.id for case in CASES}) == len(CASES), "case ids must be unique"


def test_the_base_manifest_of_the_table_is_valid() -> None:
    assert check_policy(base_manifest()) == []


def test_every_cross_field_rule_has_a_case() -> None:
    covered = {case.rule for case in CASES if case.rule}
    assert covered <= set(RULES), f"unknown rule ids in the table: {covered - set(RULES)}"
    assert set(RULES) - covered == set(), "every rule needs an invalid case"


@pytest.mark.parametrize("case", CASES, ids=lambda c: c.id)
def test_validate_rejects_the_manifest_and_names_the_field(
    case: InvalidCase, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / f"{case.id}.yaml"
    path.write_text(case.yaml())

    code, out = validate(path, capsys)

    assert code == 1, out
    assert case.field in out, out
    assert "OK" not in out.splitlines()[0].rsplit(": ", 1)[-1]
    for line in out.splitlines():
        assert line.startswith(f"{path}: "), line


@pytest.mark.parametrize("case", [c for c in CASES if c.rule], ids=lambda c: c.id)
def test_a_cross_field_case_fails_its_rule_with_the_rules_message(case: InvalidCase) -> None:
    problems = check_policy(case.manifest)
    failed = [p for p in problems if p.rule == case.rule]
    assert failed, problems
    assert all(p.message.endswith(RULES[case.rule].message) for p in failed)  # type: ignore[index]
