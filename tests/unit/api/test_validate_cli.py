"""`breakwater validate`: verdicts for CI pipelines, never a traceback."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from breakwater.api.manifests import load_documents
from breakwater.cli import main
from tests.unit.api.invalid_table import EXAMPLES, REPO

MINIMAL = (REPO / "examples" / "minimal.yaml").read_text()
DEPLOYMENT = "apiVersion: apps/v1\nkind: Deployment\nmetadata: {name: web}\n"


def validate(*files: str, capsys: pytest.CaptureFixture[str]) -> tuple[int, list[str]]:
    """The exit code and every line printed: verdicts (stdout) and problems (stderr), in order."""
    code = main(["validate", *files])
    printed = capsys.readouterr()
    return code, printed.out.splitlines() + printed.err.splitlines()


def write(tmp_path: Path, name: str, text: str) -> str:
    path = tmp_path / name
    path.write_text(text)
    return str(path)


def test_a_valid_policy_prints_ok_and_exits_0(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = write(tmp_path, "p.yaml", MINIMAL)
    assert validate(path, capsys=capsys) == (0, [f"{path}: OK"])


def test_each_problem_is_one_line_with_its_field_path(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    text = MINIMAL.replace("port: 8080", "port: 0").replace("app: checkout", "app: -checkout")
    path = write(tmp_path, "p.yaml", text)
    code, lines = validate(path, capsys=capsys)
    assert code == 1
    assert lines == [  # as the API server says it
        f'{path}: spec.selector.matchLabels.app: Invalid value: "-checkout": spec.selector.matchLabels.app '
        "in body should match '^(([A-Za-z0-9][-A-Za-z0-9_.]{0,61})?[A-Za-z0-9])?$'",
        f"{path}: spec.upstreams[0].port: Invalid value: 0: spec.upstreams[0].port in body should be greater "
        "than or equal to 1",
    ]


def test_several_documents_are_numbered_and_other_kinds_skipped(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    bad = MINIMAL.replace("timeout", "x").replace("  upstreams:", "  timeout: 1d\n  upstreams:")
    path = write(tmp_path, "all.yaml", f"{MINIMAL}---\n{DEPLOYMENT}---\n{bad}---\n")
    code, lines = validate(path, capsys=capsys)
    assert code == 1
    assert lines[0] == f"{path} (document 1): OK"
    assert lines[1] == f"{path} (document 2): skipped: apps/v1 Deployment is not a CircuitBreakerPolicy"
    assert lines[2].startswith(f'{path} (document 3): spec.timeout: Invalid value: "1d": must be a duration')


def test_a_file_without_policies_is_skipped_not_failed(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = write(tmp_path, "d.yaml", DEPLOYMENT)
    assert validate(path, capsys=capsys) == (
        0,
        [f"{path}: skipped: apps/v1 Deployment is not a CircuitBreakerPolicy"],
    )
    empty = write(tmp_path, "e.yaml", "# nothing\n")
    assert validate(empty, capsys=capsys) == (0, [f"{empty}: skipped: no documents"])


def test_a_list_is_validated_item_by_item(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    item = "\n".join("    " + line for line in MINIMAL.splitlines() if line and not line.startswith("#"))
    path = write(tmp_path, "l.yaml", f"apiVersion: v1\nkind: List\nitems:\n  -\n{item}\n")
    assert validate(path, capsys=capsys) == (0, [f"{path} (item 1): OK"])


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("spec: [\n", "invalid YAML: "),
        ("- 1\n- 2\n", "not a Kubernetes object"),
        ("apiVersion: v1\nkind: List\nitems: 5\n", "items: Invalid value: must be a list"),
        ("\x00\x01binary", "invalid YAML"),
        ("spec:\n  timeout: 2s\n  timeout: 5s\n", "invalid YAML: duplicate key 'timeout' (line 3, column 3)"),
        ("a: &a [*a]\n", "invalid YAML: an alias refers to a node that contains it"),
        ("[" * 5000 + "]" * 5000 + "\n", "invalid YAML: nested too deeply"),
        (  # nine aliases a level, nine levels: 387 million strings from 300 bytes
            "".join(
                f"{name}: &{name} [{', '.join([f'*{prev}' if prev else 'x'] * 9)}]\n"
                for prev, name in zip(["", *"abcdefgh"], "abcdefghi", strict=True)
            ),
            "invalid YAML: excessive aliasing (more than 1,000,000 values)",
        ),
    ],
    ids=[
        "unclosed",
        "list",
        "list-items-not-a-list",
        "binary",
        "duplicate-key",
        "recursive-alias",
        "deep",
        "alias-bomb",
    ],
)
def test_broken_input_is_reported_not_raised(
    text: str, expected: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = write(tmp_path, "b.yaml", text)
    code, lines = validate(path, capsys=capsys)
    assert code == 1
    assert len(lines) == 1
    assert lines[0].startswith(f"{path}: ")
    assert expected in lines[0]


def test_unreadable_files_are_reported_and_the_others_still_checked(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    good = write(tmp_path, "p.yaml", MINIMAL)
    latin = tmp_path / "latin1.yaml"
    latin.write_bytes(b"kind: caf\xe9\n")
    code, lines = validate(str(tmp_path / "missing.yaml"), str(latin), good, capsys=capsys)
    assert code == 1
    assert lines[0] == f"{good}: OK"  # stdout; the problems are on stderr
    assert lines[1] == f"{tmp_path / 'missing.yaml'}: cannot read: No such file or directory"
    assert lines[2].startswith(f"{latin}: cannot read: not UTF-8")


def test_wrong_version_of_our_kind_is_an_error(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = write(tmp_path, "v.yaml", MINIMAL.replace("v1alpha1", "v1"))
    assert validate(path, capsys=capsys) == (
        1,
        [f"{path}: apiVersion: 'breakwater.dev/v1' is not served: did you mean breakwater.dev/v1alpha1?"],
    )


def test_unquoted_timestamps_are_read_as_kubectl_reads_them(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    override = "  override: {mode: ForceOpen, reason: x, until: %s}\n  upstreams:"
    ok = write(tmp_path, "ok.yaml", MINIMAL.replace("  upstreams:", override % "2030-01-01T12:00:00Z"))
    spaced = write(tmp_path, "sp.yaml", MINIMAL.replace("  upstreams:", override % "2030-01-01 12:00:00Z"))
    assert validate(ok, capsys=capsys) == (0, [f"{ok}: OK"])
    code, lines = validate(spaced, capsys=capsys)
    assert code == 1
    assert lines[0].startswith(
        f'{spaced}: spec.override.until: Invalid value: "2030-01-01 12:00:00Z": must be'
    )


def test_stdin_is_read_for_a_dash() -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "breakwater.cli", "validate", "-", *map(str, EXAMPLES[:1])],
        input=MINIMAL,
        capture_output=True,
        text=True,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.splitlines() == ["<stdin>: OK", f"{EXAMPLES[0]}: OK"]
    assert proc.stderr == ""


def test_the_crd_command_checks_drift(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "crd.yaml"
    assert main(["crd", "--write", str(path)]) == 0
    assert main(["crd", "--check", str(path)]) == 0
    path.write_text(path.read_text().replace("cbp", "cb"))
    capsys.readouterr()
    assert main(["crd", "--check", str(path)]) == 1
    diff = capsys.readouterr().out
    assert "\n-    - cb\n" in diff
    assert "\n+    - cbp\n" in diff
    assert main(["crd"]) == 0
    assert capsys.readouterr().out.startswith("# GENERATED")


def test_the_api_docs_command_refuses_an_example_the_api_server_would_refuse(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    example = write(tmp_path, "example.yaml", MINIMAL.replace("port: 8080", "port: 99999"))
    assert main(["api-docs", "--example", example]) == 1
    printed = capsys.readouterr()
    assert printed.out == ""
    assert f"{example}: spec.upstreams[0].port: Invalid value: 99999" in printed.err


def test_the_api_docs_command_writes_and_checks(tmp_path: Path) -> None:
    path = tmp_path / "api.md"
    assert main(["api-docs", "--write", str(path)]) == 0
    assert main(["api-docs", "--check", str(path)]) == 0
    path.write_text("stale")
    assert main(["api-docs", "--check", str(path)]) == 1


@pytest.mark.parametrize(
    ("scalar", "value"),
    [("n", False), ("Y", True), ("on", True), ("1e3", 1000.0), ("1:30", "1:30"), ("0x1F", 31), ("'n'", "n")],
)
def test_plain_scalars_are_read_as_kubectl_reads_them(scalar: str, value: object) -> None:
    assert load_documents(f"v: {scalar}\n") == [{"v": value}]


def test_an_upstream_named_n_must_be_quoted_as_for_the_api_server(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = write(tmp_path, "n.yaml", MINIMAL.replace("- name: payments", "- name: n"))
    code, lines = validate(path, capsys=capsys)
    assert code == 1
    assert lines == [
        f'{path}: spec.upstreams[0].name: Invalid value: "boolean": spec.upstreams[0].name in body must be '
        'of type string: "boolean"'
    ]
    quoted = write(tmp_path, "q.yaml", MINIMAL.replace("- name: payments", "- name: 'n'"))
    assert validate(quoted, capsys=capsys) == (0, [f"{quoted}: OK"])


def test_a_typo_in_the_kind_of_our_group_is_an_error_with_the_likely_fix(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = write(
        tmp_path, "k.yaml", MINIMAL.replace("kind: CircuitBreakerPolicy", "kind: CircuitbreakerPolicy")
    )
    fix = "did you mean CircuitBreakerPolicy?"
    assert validate(path, capsys=capsys) == (
        1,
        [f"{path}: kind: no kind 'CircuitbreakerPolicy' in breakwater.dev: {fix}"],
    )


def test_metadata_is_checked_as_the_api_server_checks_it(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    text = MINIMAL.replace("  name: payments", "  name: payments\n  namespace: Shop_NS")
    path = write(tmp_path, "n.yaml", text)
    code, lines = validate(path, capsys=capsys)
    assert code == 1
    assert lines[0].startswith(
        f'{path}: metadata.namespace: Invalid value: "Shop_NS": a lowercase RFC 1123 label'
    )


def test_directories_are_read_like_kubectl_and_recursively_with_r(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    (tmp_path / "nested").mkdir()
    top = write(tmp_path, "a.yaml", MINIMAL)
    nested = write(tmp_path / "nested", "b.yml", MINIMAL)
    write(tmp_path, "README.md", "not a manifest")
    assert validate(str(tmp_path), capsys=capsys) == (0, [f"{top}: OK"])
    assert validate("-R", str(tmp_path), capsys=capsys) == (0, [f"{top}: OK", f"{nested}: OK"])
    empty = tmp_path / "empty"
    empty.mkdir()
    assert validate(str(empty), capsys=capsys) == (1, [f"no manifest files in {empty}"])


def test_the_tools_say_what_is_wrong_with_broken_yaml_without_a_traceback(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = write(tmp_path, "bad.yaml", "spec: [\n")
    assert main(["render-config", path]) == 1
    printed = capsys.readouterr()
    assert printed.err.startswith(f"{path}: invalid YAML: expected the node content")
    assert "Traceback" not in printed.err + printed.out


def test_version(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exited:
        main(["--version"])
    assert exited.value.code == 0
    assert capsys.readouterr().out.startswith("breakwater ")
