"""`breakwater render-config`: the sidecar config a pod with given labels would run, offline.

Reads CircuitBreakerPolicy manifests (what you would `kubectl apply`), renders each like the operator
does, and resolves them for the labels: the output is exactly the JSON `breakwater proxy --config`
loads, with the config hash the operator would expect that pod to report.
"""

from __future__ import annotations

import argparse
import datetime
import sys
from pathlib import Path

from breakwater.api.bundle import PolicyBundle
from breakwater.api.manifests import ManifestError, load_documents
from breakwater.api.policy import check_policy, is_namespace_name, is_policy_manifest
from breakwater.api.validate import manifest_objects
from breakwater.injection.render import RenderError, render_bundle
from breakwater.injection.resolve import resolve


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "files", nargs="+", metavar="FILE", help="policy manifests (YAML or JSON), '-' for stdin"
    )
    parser.add_argument(
        "--labels", default="", help="the pod's labels, e.g. app=checkout,tier=web (default: no labels)"
    )
    parser.add_argument("--namespace", default="default", help="namespace of policies that name none")


def parse_labels(text: str) -> dict[str, str]:
    labels: dict[str, str] = {}
    for part in filter(None, (p.strip() for p in text.split(","))):
        key, sep, value = part.partition("=")
        if not sep or not key:
            raise ValueError(f"--labels: expected key=value, got {part!r}")
        if key in labels:
            raise ValueError(f"--labels: {key!r} given twice")
        labels[key] = value
    return labels


def run(args: argparse.Namespace) -> int:
    try:
        labels = parse_labels(args.labels)
        if not is_namespace_name(args.namespace):
            raise ValueError(f"--namespace: {args.namespace!r} is not a namespace name")
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    bundles: list[PolicyBundle] = []
    epoch = datetime.datetime(1970, 1, 1, tzinfo=datetime.UTC)
    for name in args.files:
        try:
            text = sys.stdin.read() if name == "-" else Path(name).read_text()
            documents = load_documents(text)
        except OSError as exc:
            print(f"{name}: cannot read: {exc.strerror or exc}", file=sys.stderr)
            return 1
        except (ManifestError, UnicodeDecodeError) as exc:
            print(f"{name}: {exc}", file=sys.stderr)
            return 1
        for where, doc in manifest_objects([d for d in documents if d is not None]):
            if not isinstance(doc, dict) or not is_policy_manifest(doc):
                continue  # other kinds: a policy file may carry its Deployment too
            at = f"{name} ({where})" if where else name
            problems = check_policy(doc)
            if problems:  # what the API server would refuse is not rendered (a typo in kind included)
                for problem in problems:
                    print(f"{at}: {problem}", file=sys.stderr)
                return 1
            meta = dict(doc.get("metadata") or {})
            meta.setdefault("namespace", args.namespace)
            # Creation order decides conflicts in a cluster; offline, files are taken in the order given.
            meta.setdefault(
                "creationTimestamp", (epoch + datetime.timedelta(seconds=len(bundles))).isoformat()
            )
            try:
                bundles.append(render_bundle({**doc, "metadata": meta}))
            except RenderError as exc:
                print(f"{at}: {type(exc).__name__}: {exc}", file=sys.stderr)
                return 1
    resolution = resolve(labels, bundles)
    for conflict in resolution.conflicts:
        print(
            f"conflict: {conflict.loser} loses {conflict.upstream!r}: {conflict.message()}", file=sys.stderr
        )
    if not resolution.policies:
        print("no policy selects a pod with these labels", file=sys.stderr)
    print(resolution.config.model_dump_json(by_alias=True, indent=2))
    return 0
