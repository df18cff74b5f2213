"""The failure and retry classifiers of an upstream's config, compiled into O(1) lookups for the hot path.

(The breaker's own settings need no compiling: the config carries the engine's `BreakerSettings`.)
"""

from __future__ import annotations

import enum
from collections.abc import Sequence
from dataclasses import dataclass

from breakwater.api.plain.sidecar import PlainFailureConfig, PlainRetryConfig

__all__ = [
    "IDEMPOTENT_METHODS",
    "FailureKind",
    "FailurePolicy",
    "RetryPolicy",
    "status_matcher",
]

IDEMPOTENT_METHODS = frozenset({"GET", "HEAD", "OPTIONS", "TRACE", "PUT", "DELETE"})
"""RFC 9110 section 9.2.2: the only methods the proxy ever retries."""


class FailureKind(enum.Enum):
    """Why an upstream exchange produced no (complete) response. The value is the marker header."""

    CONNECT = "connect-error"
    TIMEOUT = "timeout"
    RESET = "reset"


def status_matcher(patterns: Sequence[str]) -> tuple[bool, ...]:
    """A 1000-entry table: ``table[status]`` says whether `status` matches one of `patterns`.

    Patterns are exact codes (``"503"``) or classes (``"5xx"``); anything outside 100..599 never matches.
    Every three-digit status (all an HTTP/1.1 parser accepts) has an entry: the fast path indexes
    the table without a bounds check.
    """
    table = [False] * 1000
    for pattern in patterns:
        if pattern.endswith("xx"):
            first = int(pattern[0]) * 100
            for code in range(first, first + 100):
                table[code] = True
        else:
            table[int(pattern)] = True
    return tuple(table)


@dataclass(frozen=True, slots=True)
class FailurePolicy:
    """What counts against the upstream: failure statuses, and which transport failures."""

    statuses: tuple[bool, ...]
    timeouts: bool
    connect_errors: bool
    resets: bool

    @classmethod
    def from_config(cls, config: PlainFailureConfig) -> FailurePolicy:
        return cls(
            statuses=status_matcher(config.status_codes),
            timeouts=config.timeouts,
            connect_errors=config.connect_errors,
            resets=config.resets,
        )

    def is_failure_status(self, status: int) -> bool:
        return 0 <= status < 1000 and self.statuses[status]

    def counts(self, kind: FailureKind) -> bool:
        """Whether a transport failure of this kind counts as a breaker failure (else it is ignored)."""
        if kind is FailureKind.TIMEOUT:
            return self.timeouts
        if kind is FailureKind.CONNECT:
            return self.connect_errors
        return self.resets


@dataclass(frozen=True, slots=True)
class RetryPolicy:
    """Whether and when to retry; `attempts` counts every try, the first included."""

    attempts: int
    per_try_timeout: float | None
    budget_percent: float
    statuses: tuple[bool, ...]
    kinds: frozenset[FailureKind]

    @classmethod
    def from_config(cls, config: PlainRetryConfig) -> RetryPolicy:
        patterns: list[str] = []
        kinds: set[FailureKind] = set()
        for word in config.retry_on:
            if word == "connect-failure":
                kinds.add(FailureKind.CONNECT)
            elif word == "reset":
                kinds.add(FailureKind.RESET)
            elif word == "timeout":
                kinds.add(FailureKind.TIMEOUT)
            elif word == "5xx":
                patterns.append("5xx")
            elif word == "gateway-error":
                patterns.extend(["502", "503", "504"])
            elif word == "retriable-4xx":
                patterns.append("409")
            else:
                patterns.append(word)
        return cls(
            attempts=config.attempts,
            per_try_timeout=config.per_try_timeout_seconds,
            budget_percent=config.budget_percent,
            statuses=status_matcher(patterns),
            kinds=frozenset(kinds),
        )

    @property
    def enabled(self) -> bool:
        return self.attempts > 1 and self.budget_percent > 0

    def retries_status(self, status: int) -> bool:
        return 0 <= status < 1000 and self.statuses[status]
