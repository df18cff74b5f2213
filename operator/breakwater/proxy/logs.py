"""Structured logging for the sidecar: text or JSON lines.

Each module logs as its own name (``breakwater.proxy.sidecar``, ``.forwarding``, ``.admin``...), and two
channels that users filter on are named for what they carry, whichever module writes to them:
``breakwater.proxy.transitions`` (one line per breaker transition) and ``breakwater.proxy.config``
(loads and reloads). Structured fields travel in ``extra={"fields": {...}}`` and become JSON keys (or
``key=value`` pairs in text form).
"""

from __future__ import annotations

import json
import logging
import sys
import time
from typing import Any, Final

__all__ = [
    "CONFIG_CHANNEL",
    "TRANSITIONS_CHANNEL",
    "JsonFormatter",
    "RateLimitedLog",
    "TextFormatter",
    "configure_logging",
]

TRANSITIONS_CHANNEL: Final = "breakwater.proxy.transitions"
CONFIG_CHANNEL: Final = "breakwater.proxy.config"

_RESERVED: Final = "fields"


def _fields(record: logging.LogRecord) -> dict[str, Any]:
    value = getattr(record, _RESERVED, None)
    fields = value if isinstance(value, dict) else {}
    # kopf's per-object loggers (the operator's handlers) say which object in `k8s_ref`: without it,
    # "Handler 'reconcile_policy' succeeded." is the same line for every policy.
    ref = getattr(record, "k8s_ref", None)
    if isinstance(ref, dict) and ref.get("name"):
        named = {"policy" if ref.get("kind") == "CircuitBreakerPolicy" else "object": ref["name"]}
        fields = {**named, **({"namespace": ref["namespace"]} if ref.get("namespace") else {}), **fields}
    return fields


def _timestamp(record: logging.LogRecord) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created)) + f".{int(record.msecs):03d}Z"


class JsonFormatter(logging.Formatter):
    """One JSON object per line: ts, level, logger, msg, the structured fields, and exc if any."""

    def format(self, record: logging.LogRecord) -> str:
        doc: dict[str, Any] = {
            "ts": _timestamp(record),
            "level": record.levelname.lower(),
            "logger": record.name,
            "msg": record.getMessage(),
        }
        for key, value in _fields(record).items():
            doc.setdefault(key, value)
        if record.exc_info:
            doc["exc"] = self.formatException(record.exc_info)
        return json.dumps(doc, default=str, separators=(",", ":"))


class TextFormatter(logging.Formatter):
    """``ts level logger: msg key=value ...``"""

    def format(self, record: logging.LogRecord) -> str:
        parts = [_timestamp(record), record.levelname.lower(), f"{record.name}:", record.getMessage()]
        parts.extend(f"{k}={v}" for k, v in _fields(record).items())
        line = " ".join(parts)
        if record.exc_info:
            line += "\n" + self.formatException(record.exc_info)
        return line


class RateLimitedLog:
    """At most one WARNING line per kind every `interval` seconds, saying how many were not logged
    since: a misbehaving client must not be able to flood the pod's logs."""

    def __init__(self, logger: logging.Logger, *, interval: float = 10.0) -> None:
        self._logger = logger
        self._interval = interval
        self._last: dict[str, float] = {}
        self._suppressed: dict[str, int] = {}

    def warning(self, kind: str, message: str, *args: object) -> None:
        now = time.monotonic()
        last = self._last.get(kind)
        if last is not None and now - last < self._interval:
            self._suppressed[kind] = self._suppressed.get(kind, 0) + 1
            return
        if len(self._last) > 64:  # kinds come from parser messages: a small, closed set; stay bounded
            self._last.clear()
            self._suppressed.clear()
        self._last[kind] = now
        suppressed = self._suppressed.pop(kind, 0)
        self._logger.warning(
            message + (" (%d more like it in the last %.0f s)" if suppressed else ""),
            *args,
            *((suppressed, self._interval) if suppressed else ()),
            extra={"fields": {"kind": kind}},
        )


def configure_logging(*, fmt: str = "text", level: str = "INFO") -> None:
    """Send the root logger to stderr in `fmt` (``text`` or ``json``) at `level`."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter() if fmt == "json" else TextFormatter())
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(level.upper())
    # aiohttp's own access log is off (the proxy counts requests itself); its errors stay.
    logging.getLogger("aiohttp.access").setLevel(logging.WARNING)
