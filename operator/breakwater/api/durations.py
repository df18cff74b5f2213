"""Parsing of the two string scalars the API uses: durations ("250ms", "1m30s") and RFC 3339 timestamps.

The grammar is the subset of Go's ``time.ParseDuration`` that the API server's CEL ``duration()``
understands identically: decimal numbers (at most 3 fractional digits) with units ``h``, ``m``, ``s``
or ``ms``, concatenated ("1h30m", "1.5s"). Values are exact integers of nanoseconds, as in Go.
"""

from __future__ import annotations

import re
from datetime import UTC, datetime

__all__ = [
    "DURATION_MAX_LENGTH",
    "DURATION_PATTERN",
    "MAX_DURATION",
    "MAX_DURATION_NS",
    "TIMESTAMP_MAX_LENGTH",
    "TIMESTAMP_PATTERN",
    "format_duration",
    "format_timestamp",
    "parse_duration_ns",
    "parse_timestamp",
]

DURATION_PATTERN = r"^([0-9]+([.][0-9]{1,3})?(h|m|s|ms))+$"
"""The shape of a duration (RE2 and Python `re` agree on it; no backslashes, so it embeds in CEL)."""
DURATION_MAX_LENGTH = 32
MAX_DURATION = "720h"
"""The longest duration any field accepts (30 days)."""

_NS = {"h": 3_600_000_000_000, "m": 60_000_000_000, "s": 1_000_000_000, "ms": 1_000_000}
_TOKEN = re.compile(r"([0-9]+)(?:[.]([0-9]{1,3}))?(ms|h|m|s)")
_SHAPE = re.compile(DURATION_PATTERN)
MAX_DURATION_NS = 720 * _NS["h"]

TIMESTAMP_PATTERN = (
    r"^[0-9]{4}-(0[1-9]|1[0-2])-(0[1-9]|[12][0-9]|3[01])"
    r"T([01][0-9]|2[0-3]):[0-5][0-9]:[0-5][0-9]([.][0-9]{1,9})?"
    r"(Z|[+-]([01][0-9]|2[0-3]):[0-5][0-9])$"
)
"""RFC 3339 with a mandatory time zone ("2030-01-01T12:00:00Z", "...+02:00"), as CEL timestamp() reads it."""
TIMESTAMP_MAX_LENGTH = 64
_TIMESTAMP = re.compile(TIMESTAMP_PATTERN)
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


def parse_duration_ns(text: str) -> int | None:
    """The duration in nanoseconds, or None when `text` is not a duration of the grammar above.

    Zero and values above `MAX_DURATION` parse (callers decide); only the shape is checked here.
    """
    if len(text) > DURATION_MAX_LENGTH or not _SHAPE.fullmatch(text):
        return None
    total = 0
    for whole, frac, unit in _TOKEN.findall(text):
        scale = _NS[unit]
        total += int(whole) * scale + int((frac or "0").ljust(3, "0")) * (scale // 1000)
    return total


def format_duration(nanoseconds: int) -> str:
    """The canonical spelling of a whole number of milliseconds or more ("1h30m", "250ms", "0s")."""
    if nanoseconds < 0:
        raise ValueError("durations are never negative")
    if nanoseconds == 0:
        return "0s"
    parts: list[str] = []
    rest = nanoseconds
    for unit in ("h", "m", "s", "ms"):
        count, rest = divmod(rest, _NS[unit])
        if count:
            parts.append(f"{count}{unit}")
    if rest:
        raise ValueError(f"{nanoseconds} ns is not a whole number of milliseconds")
    return "".join(parts)


def parse_timestamp(value: str) -> datetime | None:
    """The aware datetime of an RFC 3339 timestamp with zone, or None when `value` is not one.

    Like CEL ``timestamp()`` on the API server, impossible dates (Feb 31) and times before the Unix
    epoch are refused.
    """
    if len(value) > TIMESTAMP_MAX_LENGTH or not _TIMESTAMP.fullmatch(value):
        return None
    try:
        parsed = datetime.fromisoformat(value)
    except ValueError:
        return None
    return parsed if parsed >= _EPOCH else None


def format_timestamp(value: datetime) -> str:
    """RFC 3339 text of an aware datetime, UTC written as ``Z`` (Kubernetes' own spelling)."""
    if value.tzinfo is None:
        raise ValueError("timestamps need a time zone")
    text = value.isoformat()
    return text[:-6] + "Z" if text.endswith("+00:00") else text
