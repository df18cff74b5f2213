"""What a sidecar knows about its own pod: its downward-API labels, and what it ran before."""

from __future__ import annotations

import dataclasses
import json

from breakwater.api.plain.sidecar import PlainSidecarConfig
from breakwater.breaker.settings import Mode
from breakwater.errors import InvalidInput


class PodInfoError(InvalidInput):
    """The labels file cannot be read or parsed; the message says which line."""


def parse_labels(text: str) -> dict[str, str]:
    """Parse the downward API's `key="value"` lines (values are Go-quoted strings)."""
    labels: dict[str, str] = {}
    for line in text.splitlines():
        if not line.strip():
            continue
        key, sep, quoted = line.partition("=")
        if not sep:
            raise PodInfoError(f"not a label line: {line!r}")
        try:
            value = json.loads(quoted)
        except json.JSONDecodeError as exc:
            raise PodInfoError(f"label {key!r} has an unreadable value {quoted!r}") from exc
        labels[key] = str(value)
    return labels


def carry_over(previous: PlainSidecarConfig | None, current: PlainSidecarConfig) -> PlainSidecarConfig:
    """Keep upstreams that disappeared (policy deleted) as pass-through listeners.

    The app may still call their local port: dropping the listener would break it, so the upstream
    stays, with mode Disabled (forwarded, never rejected), until the pod restarts.
    """
    if previous is None:
        return current
    names = {u.name for u in current.upstreams}
    ports = {u.listen_port for u in current.upstreams if u.listen_port}
    kept = [
        dataclasses.replace(u, mode=Mode.DISABLED)
        for u in previous.upstreams
        if u.name not in names and (not u.listen_port or u.listen_port not in ports)
    ]
    if not kept:
        return current
    return current.replace(upstreams=(*current.upstreams, *kept))
