"""The whole CircuitBreakerPolicy object, and the one way to parse and check one from a manifest."""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Literal

from pydantic import Field, ValidationError
from pydantic_core import ErrorDetails

from breakwater.api.base import StatusModel
from breakwater.api.constants import API_VERSION, GROUP, KIND
from breakwater.api.spec import CircuitBreakerPolicySpec
from breakwater.api.status import CircuitBreakerPolicyStatus
from breakwater.errors import InvalidInput

__all__ = [
    "CircuitBreakerPolicy",
    "ObjectMeta",
    "PolicyError",
    "Problem",
    "check_policy",
    "is_policy_manifest",
    "parse_policy",
    "parse_spec",
]

_DNS_SUBDOMAIN = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?([.][a-z0-9]([-a-z0-9]*[a-z0-9])?)*$")


class ObjectMeta(StatusModel):
    """The parts of metadata the API reads; everything else is kept as it is."""

    name: str | None = None
    namespace: str | None = None
    generation: int | None = None
    uid: str | None = None
    resource_version: str | None = None
    labels: dict[str, str] | None = None
    annotations: dict[str, str] | None = None


class CircuitBreakerPolicy(StatusModel):
    """Circuit breaking for the HTTP calls of a set of client pods, by an injected sidecar proxy."""

    api_version: Literal["breakwater.dev/v1alpha1"] = "breakwater.dev/v1alpha1"
    kind: Literal["CircuitBreakerPolicy"] = "CircuitBreakerPolicy"
    metadata: ObjectMeta = Field(default_factory=ObjectMeta)
    spec: CircuitBreakerPolicySpec
    status: CircuitBreakerPolicyStatus | None = None


@dataclass(frozen=True)
class Problem:
    """One reason a manifest is invalid: where (a field path such as spec.upstreams[0].port) and what."""

    path: str
    message: str
    rule: str | None = None
    """The `breakwater.api.rules.Rule` id, when a cross-field rule failed."""

    def __str__(self) -> str:
        return f"{self.path}: {self.message}" if self.path else self.message


class PolicyError(InvalidInput):
    """A manifest that is not a valid CircuitBreakerPolicy; `problems` (of `Problem`) says why, field by
    field."""


def _join_path(loc: tuple[int | str, ...]) -> str:
    path = ""
    for part in loc:
        if isinstance(part, int):
            path += f"[{part}]"
        elif re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", part):
            path += f".{part}" if path else part
        else:
            path += f"[{part}]"
    return path


def _problem(error: ErrorDetails, prefix: tuple[int | str, ...]) -> Problem:
    loc = prefix + tuple(error["loc"])
    # Pydantic appends the name of the function for validators; keep only field names and indexes.
    loc = tuple(p for p in loc if not (isinstance(p, str) and p.startswith("function-")))
    path = _join_path(loc)
    ctx = error.get("ctx") or {}
    if error["type"] == "cel_rule":
        return Problem(path + str(ctx.get("field_path", "")), str(ctx["message"]), str(ctx["rule"]))
    message = error["msg"]
    if error["type"] == "extra_forbidden":
        message = "unknown field"
    return Problem(path, message)


def problems_of(exc: ValidationError, *, prefix: tuple[int | str, ...] = ()) -> list[Problem]:
    """The problems of a pydantic error, with wire (camelCase) field paths."""
    return [_problem(error, prefix) for error in exc.errors(include_url=False)]


def is_policy_manifest(document: Mapping[str, Any]) -> bool:
    """Whether a manifest claims to be a CircuitBreakerPolicy (of any version of our group)."""
    api_version = document.get("apiVersion")
    return (
        document.get("kind") == KIND
        and isinstance(api_version, str)
        and api_version.split("/", 1)[0] == GROUP
    )


def check_policy(document: Any) -> list[Problem]:
    """Every problem the API server would find in this manifest (empty when it would accept it)."""
    if not isinstance(document, Mapping):
        return [Problem("", "a manifest must be a mapping (apiVersion, kind, metadata, spec)")]
    problems: list[Problem] = []
    if document.get("apiVersion") != API_VERSION:
        problems.append(Problem("apiVersion", f"must be {API_VERSION}"))
    if document.get("kind") != KIND:
        problems.append(Problem("kind", f"must be {KIND}"))
    metadata = document.get("metadata")
    name = metadata.get("name") if isinstance(metadata, Mapping) else None
    if not isinstance(metadata, Mapping):
        problems.append(Problem("metadata", "is required, with a name"))
    elif not isinstance(name, str) or not name:
        problems.append(Problem("metadata.name", "is required"))
    elif len(name) > 253 or not _DNS_SUBDOMAIN.fullmatch(name):
        problems.append(
            Problem("metadata.name", "must be a DNS subdomain: lower case letters, digits, '-' and '.'")
        )
    if "spec" not in document or document["spec"] is None:
        problems.append(Problem("spec", "Field required"))
        return problems
    try:
        CircuitBreakerPolicySpec.model_validate(document["spec"], by_alias=True, by_name=False)
    except ValidationError as exc:
        problems.extend(problems_of(exc, prefix=("spec",)))
    return problems


def parse_spec(spec: Any) -> CircuitBreakerPolicySpec:
    """Validate a ``spec`` as it comes from the API server (camelCase); raise `PolicyError`."""
    try:
        return CircuitBreakerPolicySpec.model_validate(spec, by_alias=True, by_name=False)
    except ValidationError as exc:
        raise PolicyError.of(problems_of(exc, prefix=("spec",))) from None


def parse_policy(document: Any) -> CircuitBreakerPolicy:
    """Validate a whole manifest or API object (camelCase); raise `PolicyError` listing every problem."""
    problems = check_policy(document)
    if problems:
        raise PolicyError.of(problems)
    try:
        return CircuitBreakerPolicy.model_validate(document, by_alias=True, by_name=False)
    except ValidationError as exc:  # only the status can still fail here
        raise PolicyError.of(problems_of(exc)) from None
