"""The Dockerfile's invariants, checked without a Docker engine (there is none on the test machine).

What is checked here: a pinned python:3.11-slim runtime base, a build stage of the same Python with a
compiler that compiles the hot path, a multi-stage build, no ADD and no piped
remote scripts, a numeric non-root USER matching the chart, an exec-form ENTRYPOINT that is a console
script of this package, byte-code compiled at build time for a read-only root, nothing installed in
the runtime stage, and a .dockerignore that sends the sources and nothing else. What is not (an
actual build and run of the image) is listed in docs/install.md.
"""

from __future__ import annotations

import json
import re
import tomllib
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[3]
DOCKERFILE = REPO / "Dockerfile"
DOCKERIGNORE = REPO / ".dockerignore"


@dataclass
class Instruction:
    keyword: str
    args: str
    line: int


@dataclass
class Stage:
    base: str
    name: str | None
    instructions: list[Instruction] = field(default_factory=list)

    def all(self, keyword: str) -> list[Instruction]:
        return [i for i in self.instructions if i.keyword == keyword]


def parse_dockerfile(text: str) -> tuple[dict[str, str], list[Stage]]:
    """Global ARG defaults and the stages, with line continuations joined and comments dropped."""
    instructions: list[Instruction] = []
    buffer, start = "", 0
    for number, raw in enumerate(text.splitlines(), start=1):
        line = raw.strip()
        if not buffer and (not line or line.startswith("#")):
            continue
        if buffer and line.startswith("#"):
            continue  # a comment inside a continued instruction
        if not buffer:
            start = number
        if line.endswith("\\"):
            buffer += line[:-1] + " "
            continue
        buffer += line
        keyword, _, args = buffer.partition(" ")
        instructions.append(Instruction(keyword.upper(), args.strip(), start))
        buffer = ""
    assert not buffer, "the Dockerfile ends inside a continued line"

    global_args: dict[str, str] = {}
    stages: list[Stage] = []
    for instruction in instructions:
        if instruction.keyword == "FROM":
            match = re.fullmatch(r"(\S+)(?:\s+AS\s+(\S+))?", instruction.args, flags=re.IGNORECASE)
            assert match, instruction
            base = re.sub(
                r"\$\{(\w+)\}|\$(\w+)", lambda m: global_args[m.group(1) or m.group(2)], match.group(1)
            )
            stages.append(Stage(base=base, name=match.group(2)))
        elif not stages:
            assert instruction.keyword == "ARG", f"only ARG may precede FROM: {instruction}"
            name, _, default = instruction.args.partition("=")
            global_args[name] = default
        else:
            stages[-1].instructions.append(instruction)
    return global_args, stages


@pytest.fixture(scope="module")
def stages() -> list[Stage]:
    return parse_dockerfile(DOCKERFILE.read_text())[1]


_PYTHON_IMAGE = re.compile(
    r"python:(?P<release>3\.11\.\d+)(?P<slim>-slim)?(?P<suite>-[a-z]+)?(@sha256:[0-9a-f]{64})?"
)


def test_the_runtime_base_is_python_3_11_slim_pinned_to_a_release_or_digest(stages: list[Stage]) -> None:
    match = _PYTHON_IMAGE.fullmatch(stages[-1].base)
    expected = f"{stages[-1].base}: expected python:3.11.<patch>-slim[-<debian>][@sha256:...]"
    assert match, expected
    assert match["slim"], expected


def test_the_build_stage_has_the_runtimes_python_with_a_compiler(stages: list[Stage]) -> None:
    """The hot path is compiled for the build stage's Python (mypyc): the runtime's must be that
    release on that Debian suite, at the same path (the venv's interpreter symlinks). The full image
    has gcc and the headers; the slim one does not."""
    runtime = _PYTHON_IMAGE.fullmatch(stages[-1].base)
    build = _PYTHON_IMAGE.fullmatch(stages[0].base)
    assert runtime, stages[-1].base
    assert build, stages[0].base
    assert (build["release"], build["suite"]) == (runtime["release"], runtime["suite"])
    assert not build["slim"], f"{stages[0].base}: the build stage compiles, the slim image has no compiler"


def test_the_build_is_multi_stage_and_the_runtime_stage_installs_nothing(stages: list[Stage]) -> None:
    assert len(stages) >= 2
    runtime = stages[-1]
    assert not runtime.all("RUN"), "no package manager, compiler or pip in the runtime stage"
    copies = runtime.all("COPY")
    assert copies
    assert all(c.args.startswith("--from=") for c in copies), "the runtime stage copies only build output"


def test_the_hot_path_is_compiled_unless_asked_not_to(stages: list[Stage]) -> None:
    global_args = parse_dockerfile(DOCKERFILE.read_text())[0]
    assert global_args["COMPILE"] == "1"
    (build,) = stages[0].all("RUN")
    assert 'BREAKWATER_COMPILE="${COMPILE}"' in build.args
    assert "grep -q '(hot path compiled)'" in build.args, "a compiled build that is not must fail"


def test_nothing_is_fetched_with_add_or_piped_into_a_shell(stages: list[Stage]) -> None:
    for stage in stages:
        assert not stage.all("ADD"), "COPY only: ADD can fetch URLs and unpack archives implicitly"
        for run in stage.all("RUN"):
            assert not re.search(r"\b(curl|wget)\b", run.args), run
            assert "apt-get" not in run.args, f"the bases have what the build needs: {run}"


def test_the_image_runs_as_the_numeric_non_root_user_the_chart_expects(stages: list[Stage]) -> None:
    users = stages[-1].all("USER")
    assert users, "the runtime stage must set USER"
    last = stages[-1].instructions.index(users[-1])
    assert all(i.keyword != "USER" for i in stages[-1].instructions[last + 1 :])
    uid, _, gid = users[-1].args.partition(":")
    assert uid.isdigit(), "numeric so that runAsNonRoot can be verified by the kubelet"
    assert int(uid) != 0
    assert not gid or (gid.isdigit() and int(gid) != 0)
    values = yaml.safe_load((REPO / "charts" / "breakwater" / "values.yaml").read_text())
    assert int(uid) == values["podSecurityContext"]["runAsUser"] == 65532
    assert int(gid or uid) == values["podSecurityContext"]["runAsGroup"]


def test_the_entrypoint_is_the_breakwater_console_script_in_exec_form(stages: list[Stage]) -> None:
    entrypoints = stages[-1].all("ENTRYPOINT")
    assert len(entrypoints) == 1
    assert json.loads(entrypoints[0].args) == ["breakwater"]
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    assert project["scripts"]["breakwater"] == "breakwater.cli:main"
    assert "fast" in project["optional-dependencies"], "the image installs breakwater[fast] (uvloop)"
    cmd = stages[-1].all("CMD")
    assert not cmd or isinstance(json.loads(cmd[-1].args), list)


def test_the_runtime_suits_a_read_only_root_filesystem(stages: list[Stage]) -> None:
    env = " ".join(i.args for i in stages[-1].all("ENV"))
    assert "PYTHONDONTWRITEBYTECODE=1" in env
    assert "HOME=/tmp" in env, "anything that writes to $HOME lands on the chart's /tmp emptyDir"
    build_runs = " ".join(r.args for s in stages[:-1] for r in s.all("RUN"))
    assert "compileall" in build_runs, "byte-code compiled at build time"
    workdirs = [w.args for s in stages for w in s.all("WORKDIR")]
    assert all(w.startswith("/") for w in workdirs)


def _dockerignore_excludes(path: str, patterns: list[str]) -> bool:
    """Docker's rules: patterns in order, the last one matching the path or a parent decides."""
    excluded = False
    parts = path.split("/")
    candidates = ["/".join(parts[: i + 1]) for i in range(len(parts))]
    for raw in patterns:
        negate = raw.startswith("!")
        pattern = raw[1:] if negate else raw
        pattern = pattern.strip("/")
        regex = "".join(
            ".*"
            if token == "**"
            else "[^/]*"
            if token == "*"
            else "[^/]"
            if token == "?"
            else re.escape(token)
            for token in re.split(r"(\*\*|\*|\?)", pattern)
        )
        if any(re.fullmatch(regex, candidate) for candidate in candidates):
            excluded = not negate
    return excluded


def test_the_build_context_holds_the_sources_and_nothing_else() -> None:
    patterns = [
        line.strip()
        for line in DOCKERIGNORE.read_text().splitlines()
        if line.strip() and not line.startswith("#")
    ]
    _, stages = parse_dockerfile(DOCKERFILE.read_text())
    copied = [
        source
        for stage in stages
        for copy in stage.all("COPY")
        if not copy.args.startswith("--from=")
        for source in copy.args.split()[:-1]
    ]
    assert copied
    for source in copied:
        assert not _dockerignore_excludes(source.rstrip("/"), patterns), f"{source} is copied but ignored"
        assert (REPO / source).exists(), source
    for needed in (
        "pyproject.toml",
        "operator/breakwater/cli.py",
        "operator/breakwater/__init__.py",
    ):
        assert not _dockerignore_excludes(needed, patterns), needed
    for unwanted in (
        "README.md",  # the package's readme is inline: a docs edit does not rebuild the image
        ".venv/bin/python",
        ".git/HEAD",
        "tests/conftest.py",
        "charts/breakwater/values.yaml",
        "bench/results/x.json",
        "operator/breakwater/__pycache__/cli.cpython-311.pyc",
        "operator/breakwater.egg-info/PKG-INFO",
    ):
        assert _dockerignore_excludes(unwanted, patterns), unwanted
