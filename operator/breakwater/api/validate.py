"""`breakwater validate FILE...`: check CircuitBreakerPolicy manifests offline, as the API server would.

Each FILE may hold several YAML documents (``---``) and ``kind: List`` objects; ``-`` reads stdin.
For every policy it prints ``FILE: OK`` or one ``FILE: <field path>: <message>`` line per problem
(a document number is added when a file holds several). Documents of other kinds are reported as
skipped. The exit code is 1 when anything is invalid or unreadable, else 0: made for CI pipelines.

The rules are the CRD's: the same schema constraints, the same CEL rules, the same messages.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import Any, TextIO

import yaml

from breakwater.api.constants import KIND
from breakwater.api.manifests import load_documents
from breakwater.api.policy import Problem, check_policy, is_policy_manifest

__all__ = ["Verdict", "add_arguments", "run", "validate_text"]


@dataclass(frozen=True)
class Verdict:
    """What became of one document: checked (with its problems) or skipped (with the reason)."""

    where: str
    """"document 2", "document 1, item 3" or "" for the only document of a file."""
    problems: tuple[Problem, ...] = ()
    skipped: str | None = None

    @property
    def ok(self) -> bool:
        return self.skipped is not None or not self.problems


def _objects(documents: list[Any]) -> Iterator[tuple[str, Any]]:
    several = len(documents) > 1
    for index, document in enumerate(documents, start=1):
        where = f"document {index}" if several else ""
        if isinstance(document, Mapping) and document.get("kind") == "List":
            items = document.get("items") or []
            for item_index, item in enumerate(items if isinstance(items, list) else [], start=1):
                yield (f"{where}, item {item_index}" if where else f"item {item_index}"), item
        else:
            yield where, document


def validate_text(text: str) -> list[Verdict]:
    """Verdicts for every document of a YAML text (raises `yaml.YAMLError` on bad YAML)."""
    documents = [d for d in load_documents(text) if d is not None]
    verdicts: list[Verdict] = []
    for where, document in _objects(documents):
        if not isinstance(document, Mapping):
            problem = Problem("", "not a Kubernetes object: expected a mapping with apiVersion and kind")
            verdicts.append(Verdict(where, (problem,)))
        elif not is_policy_manifest(document):
            kind = document.get("kind") or "no kind"
            api_version = document.get("apiVersion") or "no apiVersion"
            verdicts.append(Verdict(where, skipped=f"{api_version} {kind} is not a {KIND}"))
        else:
            verdicts.append(Verdict(where, tuple(check_policy(document))))
    return verdicts


def _read(name: str) -> str:
    if name == "-":
        return sys.stdin.read()
    with open(name, encoding="utf-8") as handle:
        return handle.read()


def _check_file(name: str, out: TextIO) -> bool:
    label = "<stdin>" if name == "-" else name
    try:
        text = _read(name)
    except OSError as exc:
        print(f"{label}: cannot read: {exc.strerror or exc}", file=out)
        return False
    except UnicodeDecodeError as exc:
        print(f"{label}: cannot read: not UTF-8 text ({exc.reason} at byte {exc.start})", file=out)
        return False
    try:
        verdicts = validate_text(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" (line {mark.line + 1}, column {mark.column + 1})" if mark is not None else ""
        problem = getattr(exc, "problem", None) or " ".join(line.strip() for line in str(exc).splitlines())
        print(f"{label}: invalid YAML: {problem}{where}", file=out)
        return False
    if not verdicts:
        print(f"{label}: skipped: no documents", file=out)
        return True
    for verdict in verdicts:
        prefix = f"{label} ({verdict.where})" if verdict.where else label
        if verdict.skipped is not None:
            print(f"{prefix}: skipped: {verdict.skipped}", file=out)
        elif not verdict.problems:
            print(f"{prefix}: OK", file=out)
        else:
            for problem in verdict.problems:
                print(f"{prefix}: {problem}", file=out)
    return all(v.ok for v in verdicts)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("files", nargs="+", metavar="FILE", help="manifest file ('-' for stdin)")


def run(args: argparse.Namespace) -> int:
    ok = True
    for name in args.files:
        try:
            ok = _check_file(name, sys.stdout) and ok
        except Exception as exc:  # a bug here must still give a verdict, not a traceback
            print(f"{name}: internal error: {type(exc).__name__}: {exc}", file=sys.stdout)
            ok = False
    return 0 if ok else 1
