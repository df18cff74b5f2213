"""The whole CircuitBreakerPolicy object, and the one way to parse and check one from a manifest."""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from typing import Any, Literal

from pydantic import Field, ValidationError
from pydantic_core import ErrorDetails

from breakwater.api.base import StatusModel
from breakwater.api.constants import API_VERSION, GROUP, KIND, MAX_POLICY_NAME_LENGTH
from breakwater.api.problems import Problem, join_path, schema_message, shown
from breakwater.api.rules import ALL_RULES
from breakwater.api.spec import CircuitBreakerPolicySpec
from breakwater.api.status import CircuitBreakerPolicyStatus
from breakwater.errors import InvalidInput

__all__ = [
    "CircuitBreakerPolicy",
    "ObjectMeta",
    "PolicyError",
    "Problem",
    "check_policy",
    "is_namespace_name",
    "is_object_name",
    "is_policy_manifest",
    "parse_policy",
    "parse_spec",
]

_RULES = {rule.id: rule for rule in ALL_RULES}
_REASONS = {"FieldValueRequired": "Required value", "FieldValueForbidden": "Forbidden"}
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


class PolicyError(InvalidInput):
    """A manifest that is not a valid CircuitBreakerPolicy; `problems` (of `Problem`) says why, field by
    field."""


def _problem(error: ErrorDetails, prefix: tuple[int | str, ...]) -> Problem:
    loc = prefix + tuple(error["loc"])
    # Pydantic appends the name of the function for validators; keep only field names and indexes.
    loc = tuple(p for p in loc if not (isinstance(p, str) and p.startswith("function-")))
    path = join_path(loc)
    ctx = error.get("ctx") or {}
    if error["type"] == "cel_rule":
        rule = _RULES.get(str(ctx.get("rule", "")))
        where = path + str(ctx.get("field_path", ""))
        message = str(ctx["message"])
        value = error.get("input")
        if rule is not None and rule.reason in _REASONS:
            said = f"{_REASONS[rule.reason]}: {message}"
        elif (
            isinstance(value, str | int | float) and not isinstance(value, bool) and not ctx.get("field_path")
        ):
            said = f"Invalid value: {shown(value)}: {message}"  # a rule on a scalar shows the value
        else:
            said = f"Invalid value: {message}"
        return Problem(where, said, str(ctx["rule"]))
    return Problem(path, schema_message(error, path))


def problems_of(exc: ValidationError, *, prefix: tuple[int | str, ...] = ()) -> list[Problem]:
    """The problems of a pydantic error, with wire (camelCase) field paths."""
    return [_problem(error, prefix) for error in exc.errors(include_url=False)]


def is_policy_manifest(document: Mapping[str, Any]) -> bool:
    """Whether a manifest means to be a CircuitBreakerPolicy: of our API group (whatever its version or
    kind), or of our kind whatever the case or group (a typo there must be an error, not a skip)."""
    api_version, kind = document.get("apiVersion"), document.get("kind")
    group = api_version.split("/", 1)[0] if isinstance(api_version, str) and "/" in api_version else ""
    return group == GROUP or (isinstance(kind, str) and kind.lower() == KIND.lower())


_SUBDOMAIN_MESSAGE = (
    "a lowercase RFC 1123 subdomain must consist of lower case alphanumeric characters, '-' or '.', and "
    "must start and end with an alphanumeric character (e.g. 'example.com', regex used for validation is "
    "'[a-z0-9]([-a-z0-9]*[a-z0-9])?(\\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*')"
)
_LABEL_MESSAGE = (
    "a lowercase RFC 1123 label must consist of lower case alphanumeric characters or '-', and must start "
    "and end with an alphanumeric character (e.g. 'my-name',  or '123-abc', regex used for validation is "
    "'[a-z0-9]([-a-z0-9]*[a-z0-9])?')"
)
_DNS_LABEL = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")


def is_namespace_name(text: str) -> bool:
    """An RFC 1123 label of at most 63 characters, as the API server checks a namespace's name."""
    return len(text) <= 63 and _DNS_LABEL.fullmatch(text) is not None


def is_object_name(text: str) -> bool:
    """An RFC 1123 subdomain of at most 253 characters: the name of a Secret, a Service, a policy."""
    return len(text) <= 253 and _DNS_SUBDOMAIN.fullmatch(text) is not None


def _kind_and_version(document: Mapping[str, Any]) -> list[Problem]:
    """A manifest of our group (or of our kind) with a typo: said as such, with the likely fix."""
    problems = []
    api_version, kind = document.get("apiVersion"), document.get("kind")
    if api_version != API_VERSION:
        problems.append(Problem("apiVersion", f"{api_version!r} is not served: did you mean {API_VERSION}?"))
    if kind != KIND:
        problems.append(Problem("kind", f"no kind {kind!r} in {GROUP}: did you mean {KIND}?"))
    return problems


def _metadata(metadata: Any) -> list[Problem]:
    if not isinstance(metadata, Mapping):
        return [Problem("metadata", "Required value: a name")]
    problems = []
    name, namespace = metadata.get("name"), metadata.get("namespace")
    if not isinstance(name, str) or not name:
        problems.append(Problem("metadata.name", "Required value: name or generateName is required"))
    elif len(name) > MAX_POLICY_NAME_LENGTH:  # the CRD's bound, below Kubernetes' 253 (see the constant)
        problems.append(
            Problem("metadata.name", f"Too long: may not be more than {MAX_POLICY_NAME_LENGTH} bytes")
        )
    elif not _DNS_SUBDOMAIN.fullmatch(name):
        problems.append(Problem("metadata.name", f"Invalid value: {json.dumps(name)}: {_SUBDOMAIN_MESSAGE}"))
    if namespace is not None and (not isinstance(namespace, str) or not is_namespace_name(namespace)):
        problems.append(
            Problem("metadata.namespace", f"Invalid value: {json.dumps(namespace)}: {_LABEL_MESSAGE}")
        )
    return problems


def check_policy(document: Any) -> list[Problem]:
    """Every problem the API server would find in this manifest (empty when it would accept it)."""
    if not isinstance(document, Mapping):
        return [Problem("", "a manifest must be a mapping (apiVersion, kind, metadata, spec)")]
    problems = _kind_and_version(document) + _metadata(document.get("metadata"))
    if "spec" not in document or document["spec"] is None:
        problems.append(Problem("spec", "Required value"))
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
