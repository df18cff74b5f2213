"""Every error Breakwater raises on purpose, one base per concern.

The bases say what went wrong and who can fix it; the subclasses (next to the code that raises them)
only name where. Callers catch a base: `InvalidInput` is the user's to fix, and its message says
what and where; `PeerRefused` is a caller of the operator's or the sidecar's endpoints that could not
prove who it is (`NotAuthenticated`) or asked for what it may not (`NotPermitted`) — the HTTP status
is chosen where the request is answered, not where the check fails; `KubernetesError` is an answer
of the API server; `ConfigNotApplied` is a valid sidecar config that this sidecar cannot run now;
`UnusableCertificate` is a serving certificate the operator cannot load (it keeps what it serves);
`ControlPlaneError` is the test control plane (breakwater.testing).

Nothing here imports anything: every layer, the breaker included, may raise these.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Self

__all__ = [
    "BreakwaterError",
    "ConfigNotApplied",
    "ControlPlaneError",
    "InvalidInput",
    "KubernetesError",
    "NotAuthenticated",
    "NotPermitted",
    "PeerRefused",
    "UnusableCertificate",
]


class BreakwaterError(Exception):
    """The base of every error Breakwater raises on purpose."""


class InvalidInput(BreakwaterError, ValueError):
    """Something given to Breakwater cannot be used: a manifest, a flag, a config, a datagram.

    ``detail``: what is wrong (the message without ``source``); ``problems``: the individual problems
    when there are several (each prints as one line); ``source``: where the input came from (a file,
    ``PUT /config``), when known.
    """

    def __init__(self, detail: str, *, problems: Sequence[object] = (), source: str = "") -> None:
        super().__init__(f"{source}: {detail}" if source else detail)
        self.detail = detail
        self.problems = tuple(problems)
        self.source = source

    @classmethod
    def of(cls, problems: Sequence[object], *, source: str = "") -> Self:
        """One error for several problems, all of them in the message."""
        return cls("; ".join(str(p) for p in problems), problems=problems, source=source)


class PeerRefused(BreakwaterError):
    """A caller of one of our endpoints was refused; the endpoint chooses the status it answers."""


class NotAuthenticated(PeerRefused):
    """The caller could not prove who it is (no token, a token the API server rejects, a bad session)."""


class NotPermitted(PeerRefused):
    """The caller proved who it is, but asked for what only another may (another pod's report or config)."""


class KubernetesError(BreakwaterError):
    """The Kubernetes API answered with an error; ``status`` is its HTTP status (0: no answer)."""

    def __init__(self, status: int, body: str) -> None:
        super().__init__(f"{status}: {body[:300]}")
        self.status = status
        self.body = body


class ConfigNotApplied(BreakwaterError):
    """A valid sidecar config that this sidecar cannot run now (a port in use, an older generation)."""


class UnusableCertificate(BreakwaterError):
    """A serving certificate that does not load (its tls.crt does not match tls.key, or is not PEM)."""


class ControlPlaneError(BreakwaterError, RuntimeError):
    """The test control plane could not be built or started; the message says which part and why."""
