"""The API server's audit log, for tests: which requests an identity made, and which rights it holds
that it never used.

`ControlPlane(audit=True)` starts the API server with `POLICY` (every request at level Metadata: who,
what verb, which object, the answer's code; no bodies) and writes JSON lines to its `audit_log`.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

__all__ = ["POLICY", "Grant", "Request", "grants_of", "read_requests", "unused_grants"]

# RequestReceived is left out: every request is logged once when answered (a watch also once when it
# starts, ResponseStarted), in blocking mode, so the log is complete when the request returns.
POLICY = """\
apiVersion: audit.k8s.io/v1
kind: Policy
omitStages: [RequestReceived]
rules:
  - level: Metadata
"""


@dataclass(frozen=True)
class Request:
    """One resource request of the audit log."""

    user: str
    verb: str
    api_group: str  # "" for the core group
    resource: str  # "pods", or "circuitbreakerpolicies/status" for a subresource
    namespace: str
    name: str
    code: int
    pod: str = ""  # the pod a bound ServiceAccount token was issued for (the replica), if any
    at: str = ""  # when it was answered (RFC 3339, the API server's clock)

    def __str__(self) -> str:
        where = f" -n {self.namespace}" if self.namespace else ""
        group = f".{self.api_group}" if self.api_group else ""
        name = f"/{self.name}" if self.name else ""
        return f"{self.verb} {self.resource}{group}{name}{where} -> {self.code}"


def read_requests(path: Path, *, user: str | None = None) -> list[Request]:
    """The resource requests of the log (non-resource URLs such as /apis left out), of `user` if given."""
    found: list[Request] = []
    for event in _events(path):
        ref = event.get("objectRef")
        who = str((event.get("user") or {}).get("username") or "")
        if not ref or not ref.get("resource") or (user is not None and who != user):
            continue
        resource = str(ref["resource"]) + (f"/{ref['subresource']}" if ref.get("subresource") else "")
        found.append(
            Request(
                user=who,
                verb=str(event.get("verb") or ""),
                api_group=str(ref.get("apiGroup") or ""),
                resource=resource,
                namespace=str(ref.get("namespace") or ""),
                name=str(ref.get("name") or ""),
                code=int((event.get("responseStatus") or {}).get("code") or 0),
                pod=_first((event.get("user") or {}).get("extra") or {}, POD_NAME_EXTRA),
                at=str(event.get("stageTimestamp") or ""),
            )
        )
    return found


POD_NAME_EXTRA = "authentication.kubernetes.io/pod-name"


def _first(extra: Mapping[str, Any], key: str) -> str:
    values = extra.get(key) or [""]
    return str(values[0])


def _events(path: Path) -> Iterator[dict[str, Any]]:
    with path.open(encoding="utf-8") as lines:
        for line in lines:
            if line.strip():
                yield json.loads(line)


@dataclass(frozen=True)
class Grant:
    """One verb on one resource, as a ClusterRole (namespace None) or a Role grants it."""

    api_group: str
    resource: str
    verb: str
    names: tuple[str, ...] = ()  # resourceNames: any name when empty
    namespace: str | None = None

    def used_by(self, request: Request) -> bool:
        return (
            request.api_group == self.api_group
            and request.resource == self.resource
            and request.verb == self.verb
            and (not self.names or request.name in self.names)
            and (self.namespace is None or request.namespace == self.namespace)
        )

    def __str__(self) -> str:
        group = f".{self.api_group}" if self.api_group else ""
        names = f" resourceNames={list(self.names)}" if self.names else ""
        where = f" in namespace {self.namespace}" if self.namespace is not None else ""
        return f"{self.verb} {self.resource}{group}{names}{where}"


def grants_of(role: Mapping[str, Any]) -> list[Grant]:
    """Every (group, resource, verb) a ClusterRole or Role object grants."""
    namespace = role["metadata"].get("namespace") if role.get("kind") == "Role" else None
    return [
        Grant(group, resource, verb, tuple(rule.get("resourceNames") or ()), namespace)
        for rule in role.get("rules") or ()
        for group in rule.get("apiGroups") or ()
        for resource in rule.get("resources") or ()
        for verb in rule.get("verbs") or ()
    ]


def unused_grants(grants: Iterable[Grant], requests: Iterable[Request]) -> list[Grant]:
    """The grants no request made use of."""
    made = list(requests)
    return [grant for grant in grants if not any(grant.used_by(r) for r in made)]
