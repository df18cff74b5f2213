"""`breakwater validate [-R] FILE|DIR...`: check CircuitBreakerPolicy manifests offline, as the API
server would.

Each FILE may hold several YAML documents (``---``) and ``kind: List`` objects; ``-`` reads stdin; a
DIR is every .yaml, .yml and .json file in it (``-R``: and below, as ``kubectl apply -R -f``). For
every policy it prints ``FILE: OK`` on stdout, or one ``FILE: <field path>: <message>`` line per
problem on stderr (a document number is added when a file holds several), then one ``FILE: warning:
...`` line on stderr per thing that is valid but does nothing (an override whose `until` has already
passed). Documents of other kinds are reported as skipped; a manifest of our API group or of our kind
with a typo in ``kind`` or ``apiVersion`` is an error, not a skip. The exit code is 1 when anything
is invalid or unreadable, else 0 (warnings included): made for CI pipelines.

The rules are the CRD's: the same schema constraints, the same CEL rules, and the API server's
wording for both.
"""

from __future__ import annotations

import argparse
import datetime
import sys
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TextIO

from breakwater.api.constants import KIND
from breakwater.api.coordination import inert_coordination
from breakwater.api.durations import parse_timestamp
from breakwater.api.manifests import ManifestError, load_documents
from breakwater.api.policy import Problem, check_policy, is_policy_manifest

__all__ = ["DocumentVerdict", "add_arguments", "manifest_objects", "run", "validate_text"]


@dataclass(frozen=True)
class DocumentVerdict:
    """What became of one document: checked (with its problems) or skipped (with the reason)."""

    where: str
    """"document 2", "document 1, item 3" or "" for the only document of a file."""
    problems: tuple[Problem, ...] = ()
    skipped: str | None = None
    warnings: tuple[str, ...] = ()

    @property
    def ok(self) -> bool:
        return self.skipped is not None or not self.problems


ITEMS_NOT_A_LIST = object()
"""What `manifest_objects` yields for a ``kind: List`` whose ``items`` is not a list."""


def manifest_objects(documents: list[Any]) -> Iterator[tuple[str, Any]]:
    """Each object of the documents (a ``kind: List``'s items one by one), with where it is."""
    several = len(documents) > 1
    for index, document in enumerate(documents, start=1):
        where = f"document {index}" if several else ""
        if isinstance(document, Mapping) and document.get("kind") == "List":
            items = document.get("items") or []
            if not isinstance(items, list):
                yield where, ITEMS_NOT_A_LIST
                continue
            for item_index, item in enumerate(items, start=1):
                yield (f"{where}, item {item_index}" if where else f"item {item_index}"), item
        else:
            yield where, document


def validate_text(text: str) -> list[DocumentVerdict]:
    """Verdicts for every document of a YAML text (raises `ManifestError` on bad YAML)."""
    documents = [d for d in load_documents(text) if d is not None]
    verdicts: list[DocumentVerdict] = []
    for where, document in manifest_objects(documents):
        if document is ITEMS_NOT_A_LIST:
            verdicts.append(DocumentVerdict(where, (Problem("items", "Invalid value: must be a list"),)))
        elif not isinstance(document, Mapping):
            problem = Problem("", "not a Kubernetes object: expected a mapping with apiVersion and kind")
            verdicts.append(DocumentVerdict(where, (problem,)))
        elif not is_policy_manifest(document):
            kind = document.get("kind") or "no kind"
            api_version = document.get("apiVersion") or "no apiVersion"
            verdicts.append(DocumentVerdict(where, skipped=f"{api_version} {kind} is not a {KIND}"))
        else:
            verdicts.append(
                DocumentVerdict(where, tuple(check_policy(document)), warnings=tuple(warnings_of(document)))
            )
    return verdicts


def warnings_of(document: Mapping[str, Any], now: datetime.datetime | None = None) -> list[str]:
    """What is valid but would do nothing: an override that has already ended, a quorum in Observe mode."""
    spec = document.get("spec")
    override = spec.get("override") if isinstance(spec, Mapping) else None
    until = override.get("until") if isinstance(override, Mapping) else None
    ended = parse_timestamp(until) if isinstance(until, str) else None
    out = []
    if ended is not None and ended <= (now or datetime.datetime.now(datetime.UTC)):
        out.append(f"spec.override.until: {until} has already passed: the override would do nothing")
    return out + inert_coordination(spec if isinstance(spec, Mapping) else {})


def _read(name: str) -> str:
    if name == "-":
        return sys.stdin.read()
    with open(name, encoding="utf-8") as handle:
        return handle.read()


MANIFEST_SUFFIXES = (".yaml", ".yml", ".json")


def manifest_files(names: list[str], *, recursive: bool) -> Iterator[str]:
    """The files named, a directory's manifest files in name order (its subdirectories too with
    `recursive`), ``-`` as it is."""
    for name in names:
        path = Path(name)
        if name != "-" and path.is_dir():
            found = path.rglob("*") if recursive else path.glob("*")
            yield from sorted(str(p) for p in found if p.is_file() and p.suffix in MANIFEST_SUFFIXES)
        else:
            yield name


def _check_file(name: str, out: TextIO, err: TextIO) -> bool:
    label = "<stdin>" if name == "-" else name
    try:
        text = _read(name)
    except OSError as exc:
        print(f"{label}: cannot read: {exc.strerror or exc}", file=err)
        return False
    except UnicodeDecodeError as exc:
        print(f"{label}: cannot read: not UTF-8 text ({exc.reason} at byte {exc.start})", file=err)
        return False
    try:
        verdicts = validate_text(text)
    except ManifestError as exc:
        print(f"{label}: {exc}", file=err)
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
                print(f"{prefix}: {problem}", file=err)
        for warning in verdict.warnings:
            print(f"{prefix}: warning: {warning}", file=err)
    return all(v.ok for v in verdicts)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("files", nargs="+", metavar="FILE", help="manifest file or directory ('-' for stdin)")
    parser.add_argument(
        "-R", "--recursive", action="store_true", help="also the manifests in the directories' subdirectories"
    )


def run(args: argparse.Namespace) -> int:
    ok = True
    checked = 0
    for name in manifest_files(args.files, recursive=args.recursive):
        checked += 1
        try:
            ok = _check_file(name, sys.stdout, sys.stderr) and ok
        except Exception as exc:  # a bug here must still give a verdict, not a traceback
            print(f"{name}: internal error: {type(exc).__name__}: {exc}", file=sys.stderr)
            ok = False
    if not checked:
        print(f"no manifest files in {', '.join(args.files)}", file=sys.stderr)
        return 1
    return 0 if ok else 1
