"""The cross-field rules of the API, in one table: CEL for the API server, Python for everyone else.

Each `Rule` (what one is: `api/rule.py`) carries the CEL expression the CRD publishes as an
``x-kubernetes-validations`` entry, the message a person reads when it fails, and a Python predicate
with the same meaning. The models
attach rules by listing them in ``__cel_rules__``; the CRD generator emits them, the model validators
run them, and `breakwater validate` reports them, so the API server and the offline check can only
disagree if a predicate here disagrees with its CEL twin (the cluster tests compare both verdicts).

Predicates see model instances: ``has(self.x)`` in CEL is ``self.x is not None`` here (the API server
prunes nulls and applies the schema defaults before CEL runs, the models do the same).
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Callable, Iterable
from typing import Any

from breakwater.api.constants import RESERVED_LISTEN_PORTS
from breakwater.api.durations import (
    DURATION_PATTERN,
    MAX_DURATION,
    MAX_DURATION_NS,
    TIMESTAMP_PATTERN,
    parse_duration_ns,
    parse_timestamp,
)
from breakwater.api.headers import HEADER_NAME_PATTERN, MANAGED_HEADERS
from breakwater.api.rule import Rule

__all__ = ["ALL_RULES", "LABEL_KEY_PATTERN", "LABEL_VALUE_PATTERN"]

LABEL_KEY_PATTERN = (
    r"^([a-z0-9]([-a-z0-9]*[a-z0-9])?([.][a-z0-9]([-a-z0-9]*[a-z0-9])?)*/)?"
    r"[A-Za-z0-9]([-A-Za-z0-9_.]{0,61}[A-Za-z0-9])?$"
)
"""A label key: optional DNS-subdomain prefix and ``/``, then a name of at most 63 characters."""
LABEL_VALUE_PATTERN = r"^(([A-Za-z0-9][-A-Za-z0-9_.]{0,61})?[A-Za-z0-9])?$"

_LABEL_KEY = re.compile(LABEL_KEY_PATTERN)
_HEADER_NAME = re.compile(HEADER_NAME_PATTERN)
_LINE_BREAK_OR_NUL = re.compile(r"[\r\n\x00]")


def _has(value: object) -> bool:
    return value is not None


def _unique(values: Iterable[object]) -> bool:
    seen: list[object] = []
    for value in values:
        if value in seen:
            return False
        seen.append(value)
    return True


def _valid_duration(text: str) -> bool:
    ns = parse_duration_ns(text)
    return ns is not None and 0 < ns <= MAX_DURATION_NS


# --- scalars ---------------------------------------------------------------------------------------

DURATION = Rule(
    id="duration",
    cel=f"""
        self.matches('{DURATION_PATTERN}')
        && duration(self) > duration('0s') && duration(self) <= duration('{MAX_DURATION}')
    """,
    message=(
        "must be a duration such as 250ms, 30s, 5m or 1m30s (units h, m, s, ms), "
        f"greater than 0s and at most {MAX_DURATION}"
    ),
    check=_valid_duration,
)

TIMESTAMP = Rule(
    id="timestamp",
    cel=f"self.matches('{TIMESTAMP_PATTERN}') && timestamp(self) >= timestamp('1970-01-01T00:00:00Z')",
    message="must be an RFC 3339 timestamp with a time zone, such as 2030-01-01T12:00:00Z",
    check=lambda s: parse_timestamp(s) is not None,
)

HOST_NUMERIC_IS_IPV4 = Rule(
    id="upstream.host-numeric-is-ipv4",
    cel="!self.host.matches('^[0-9.]+$') || (isIP(self.host) && ip(self.host).family() == 4)",
    message="a host of digits and dots must be an IPv4 address such as 10.0.0.7 (each part at most 255)",
    check=lambda s: not re.fullmatch(r"[0-9.]+", s.host) or _ipv4(s.host),
    field_path=".host",
)


def _ipv4(text: str) -> bool:
    try:
        ipaddress.IPv4Address(text)
    except ValueError:
        return False
    return True


# --- selector --------------------------------------------------------------------------------------

SELECTOR_VALUES_REQUIRED = Rule(
    id="selector.values-required",
    cel="!(self.operator in ['In', 'NotIn']) || (has(self.values) && size(self.values) > 0)",
    message="values must list at least one value when operator is In or NotIn",
    check=lambda s: s.operator not in ("In", "NotIn") or bool(s.values),
    field_path=".values",
    reason="FieldValueRequired",
)

SELECTOR_VALUES_FORBIDDEN = Rule(
    id="selector.values-forbidden",
    cel="!(self.operator in ['Exists', 'DoesNotExist']) || !has(self.values) || size(self.values) == 0",
    message="values must be empty when operator is Exists or DoesNotExist",
    check=lambda s: s.operator not in ("Exists", "DoesNotExist") or not s.values,
    field_path=".values",
    reason="FieldValueForbidden",
)

SELECTOR_NOT_EMPTY = Rule(
    id="selector.not-empty",
    cel="""
        (has(self.matchLabels) && size(self.matchLabels) > 0)
        || (has(self.matchExpressions) && size(self.matchExpressions) > 0)
    """,
    message=(
        "selector must set matchLabels or matchExpressions: "
        "an empty selector would inject the sidecar into every pod of the namespace"
    ),
    check=lambda s: bool(s.match_labels) or bool(s.match_expressions),
    reason="FieldValueRequired",
)

SELECTOR_LABEL_KEYS = Rule(
    id="selector.label-keys",
    cel=f"!has(self.matchLabels) || self.matchLabels.all(k, k.matches('{LABEL_KEY_PATTERN}'))",
    message=(
        "matchLabels keys must be label keys such as app or example.com/tier: an optional DNS prefix "
        "and '/', then at most 63 letters, digits, '-', '_' or '.', starting and ending alphanumeric"
    ),
    check=lambda s: s.match_labels is None or all(_LABEL_KEY.fullmatch(k) for k in s.match_labels),
    field_path=".matchLabels",
)

# --- upstreams -------------------------------------------------------------------------------------

_ADMIN, _PROXY = RESERVED_LISTEN_PORTS
_ADMIN_CEL = f"(has(self.sidecar) && has(self.sidecar.adminPort) ? self.sidecar.adminPort : {_ADMIN})"
_PROXY_CEL = f"(has(self.sidecar) && has(self.sidecar.proxyPort) ? self.sidecar.proxyPort : {_PROXY})"


def _ports_of(spec: Any) -> tuple[int, int]:
    """The sidecar ports a spec names, the built-in defaults where it names none: all CEL can see (the
    operator checks its own settings when it renders the policy). Ports are >= 1024, never 0."""
    ports = spec.sidecar
    return (ports.admin_port or _ADMIN, ports.proxy_port or _PROXY) if ports is not None else (_ADMIN, _PROXY)


LISTEN_PORT_RESERVED = Rule(
    id="upstreams.listenPort-reserved",
    cel=f"""
        self.upstreams.all(u, !has(u.listenPort)
          || (u.listenPort != {_ADMIN_CEL} && u.listenPort != {_PROXY_CEL}))
    """,
    message=(
        "listenPort must not be a port of the sidecar itself: spec.sidecar.adminPort "
        f"(default {_ADMIN}) and spec.sidecar.proxyPort (default {_PROXY})"
    ),
    check=lambda s: all(u.listen_port not in _ports_of(s) for u in s.upstreams),
    field_path=".upstreams",
)

SIDECAR_PORTS_DISTINCT = Rule(
    id="sidecar.ports-distinct",
    cel=f"""
        (has(self.adminPort) ? self.adminPort : {_ADMIN}) != (has(self.proxyPort) ? self.proxyPort : {_PROXY})
    """,
    message=(
        f"adminPort and proxyPort must differ (defaults {_ADMIN} and {_PROXY}): "
        "the sidecar binds one listener on each"
    ),
    check=lambda s: (s.admin_port or _ADMIN) != (s.proxy_port or _PROXY),
)

UPSTREAM_NAMES_UNIQUE = Rule(
    id="upstreams.unique-names",
    cel="self.upstreams.all(u, self.upstreams.exists_one(v, v.name == u.name))",
    message="upstream names must be unique: each name keys one upstream in status and metrics",
    check=lambda s: _unique(u.name for u in s.upstreams),
    field_path=".upstreams",
)

LISTEN_PORTS_UNIQUE = Rule(
    id="upstreams.unique-listenPorts",
    cel="""
        self.upstreams.all(u, !has(u.listenPort)
          || self.upstreams.exists_one(v, has(v.listenPort) && v.listenPort == u.listenPort))
    """,
    message="listenPort must be unique across upstreams: two upstreams cannot listen on one local port",
    check=lambda s: _unique(u.listen_port for u in s.upstreams if _has(u.listen_port)),
    field_path=".upstreams",
)

LISTEN_PORT_OR_TRANSPARENT = Rule(
    id="upstreams.listenPort-or-transparent",
    cel="self.transparent || self.upstreams.all(u, has(u.listenPort))",
    message=(
        "every upstream needs a listenPort unless transparent is true: the app reaches an upstream "
        "at http://127.0.0.1:<listenPort>, or through HTTP_PROXY in transparent mode"
    ),
    check=lambda s: s.transparent or all(_has(u.listen_port) for u in s.upstreams),
    field_path=".upstreams",
    reason="FieldValueRequired",
)

TRANSPARENT_TARGETS_UNIQUE = Rule(
    id="upstreams.unique-targets-when-transparent",
    cel="""
        !self.transparent
        || self.upstreams.all(u, self.upstreams.exists_one(v, v.host == u.host && v.port == u.port))
    """,
    message=(
        "with transparent: true each host and port may appear in one upstream only: "
        "the forward proxy picks the upstream by the request's host and port"
    ),
    check=lambda s: not s.transparent or _unique((u.host, u.port) for u in s.upstreams),
    field_path=".upstreams",
)


def _effective_timeouts_ok(spec: Any, ok: Callable[[Any], bool]) -> bool:
    return ok(spec) and all(ok(spec.settings_for(u.name)) for u in spec.upstreams)


def _slow_calls_ok(settings: Any) -> bool:
    slow = settings.trip.slow_calls
    return slow is None or slow.slower_than.nanoseconds < settings.timeout.nanoseconds


def _per_try_ok(settings: Any) -> bool:
    retry = settings.retry
    return (
        retry is None
        or retry.per_try_timeout is None
        or retry.per_try_timeout.nanoseconds <= settings.timeout.nanoseconds
    )


SLOW_CALLS_WITHIN_TIMEOUT = Rule(
    id="trip.slowCalls.slowerThan-below-timeout",
    cel="""
        (!has(self.trip.slowCalls)
          || duration(self.trip.slowCalls.slowerThan) < duration(self.timeout))
        && self.upstreams.all(u, !has(u.overrides) || (has(u.overrides.trip)
          ? (!has(u.overrides.trip.slowCalls)
             || duration(u.overrides.trip.slowCalls.slowerThan)
                < duration(has(u.overrides.timeout) ? u.overrides.timeout : self.timeout))
          : (!has(self.trip.slowCalls)
             || duration(self.trip.slowCalls.slowerThan)
                < duration(has(u.overrides.timeout) ? u.overrides.timeout : self.timeout))))
    """,
    message=(
        "trip.slowCalls.slowerThan must be shorter than timeout, for the policy and for every upstream's "
        "overrides: a call that takes longer than the timeout is a timeout, not a slow call"
    ),
    check=lambda s: _effective_timeouts_ok(s, _slow_calls_ok),
)

PER_TRY_TIMEOUT_WITHIN_TIMEOUT = Rule(
    id="retry.perTryTimeout-within-timeout",
    cel="""
        (!has(self.retry) || !has(self.retry.perTryTimeout)
          || duration(self.retry.perTryTimeout) <= duration(self.timeout))
        && self.upstreams.all(u, !has(u.overrides) || (has(u.overrides.retry)
          ? (!has(u.overrides.retry.perTryTimeout)
             || duration(u.overrides.retry.perTryTimeout)
                <= duration(has(u.overrides.timeout) ? u.overrides.timeout : self.timeout))
          : (!has(self.retry) || !has(self.retry.perTryTimeout)
             || duration(self.retry.perTryTimeout)
                <= duration(has(u.overrides.timeout) ? u.overrides.timeout : self.timeout))))
    """,
    message=(
        "retry.perTryTimeout must not exceed timeout, for the policy and for every upstream's overrides: "
        "timeout bounds the whole request, retries included"
    ),
    check=lambda s: _effective_timeouts_ok(s, _per_try_ok),
)

# --- trip ------------------------------------------------------------------------------------------

TRIP_NEEDS_A_RULE = Rule(
    id="trip.needs-a-rule",
    cel="self.consecutiveFailures > 0 || has(self.failureRate) || has(self.slowCalls)",
    message="trip needs at least one rule: set consecutiveFailures above 0, or failureRate, or slowCalls",
    check=lambda s: s.consecutive_failures > 0 or _has(s.failure_rate) or _has(s.slow_calls),
    reason="FieldValueRequired",
)

WINDOW_COUNT_SHAPE = Rule(
    id="window.count",
    cel="self.kind != 'Count' || (has(self.size) && !has(self.duration))",
    message="a Count window needs size (how many of the most recent calls count) and no duration",
    check=lambda s: s.kind != "Count" or (_has(s.size) and not _has(s.duration)),
)

WINDOW_TIME_SHAPE = Rule(
    id="window.time",
    cel="self.kind != 'Time' || (has(self.duration) && !has(self.size))",
    message="a Time window needs duration (such as 30s: the calls of that last stretch count) and no size",
    check=lambda s: s.kind != "Time" or (_has(s.duration) and not _has(s.size)),
)

MINIMUM_CALLS_WITHIN_COUNT_WINDOW = Rule(
    id="failureRate.minimumCalls-within-window",
    cel="self.window.kind != 'Count' || !has(self.window.size) || self.minimumCalls <= self.window.size",
    message=(
        "minimumCalls must not exceed window.size for a Count window: "
        "the window never holds more calls than its size, so the rule could never trip"
    ),
    check=lambda s: s.window.kind != "Count" or s.window.size is None or s.minimum_calls <= s.window.size,
    field_path=".minimumCalls",
)

FAILURES_COUNT_SOMETHING = Rule(
    id="failures.count-something",
    cel="size(self.statusCodes) > 0 || self.timeouts || self.connectErrors || self.resets",
    message=("failures must count something: list statusCodes or set one of timeouts, connectErrors, resets"),
    check=lambda s: bool(s.status_codes) or s.timeouts or s.connect_errors or s.resets,
)

# --- open, half-open -------------------------------------------------------------------------------

OPEN_MAX_DURATION = Rule(
    id="open.maxDuration",
    cel="duration(self.maxDuration) >= duration(self.duration)",
    message="maxDuration must be at least duration: raise open.maxDuration or lower open.duration",
    check=lambda s: s.max_duration.nanoseconds >= s.duration.nanoseconds,
    field_path=".maxDuration",
)

HALF_OPEN_SUCCESSES = Rule(
    id="halfOpen.successesToClose",
    cel="!has(self.successesToClose) || self.successesToClose <= self.permittedCalls",
    message=(
        "successesToClose must not exceed permittedCalls: "
        "only permittedCalls trial calls are let through while half-open"
    ),
    check=lambda s: s.successes_to_close is None or s.successes_to_close <= s.permitted_calls,
    field_path=".successesToClose",
)

# --- fallback --------------------------------------------------------------------------------------

FALLBACK_STATIC_REQUIRED = Rule(
    id="fallback.static-required",
    cel="self.kind != 'Static' || has(self.static)",
    message="static is required when fallback kind is Static: say what to answer, e.g. static: {status: 503}",
    check=lambda s: s.kind != "Static" or _has(s.static),
    field_path=".static",
    reason="FieldValueRequired",
)

FALLBACK_STATIC_ONLY_WITH_STATIC = Rule(
    id="fallback.static-only-with-static",
    cel="self.kind == 'Static' || !has(self.static)",
    message="static is only used when fallback kind is Static: set kind: Static or remove static",
    check=lambda s: s.kind == "Static" or not _has(s.static),
    field_path=".static",
    reason="FieldValueForbidden",
)

FALLBACK_CACHED_ONLY_WITH_CACHED = Rule(
    id="fallback.cached-only-with-cached",
    cel="self.kind == 'Cached' || !has(self.cached)",
    message="cached is only used when fallback kind is Cached: set kind: Cached or remove cached",
    check=lambda s: s.kind == "Cached" or not _has(s.cached),
    field_path=".cached",
    reason="FieldValueForbidden",
)

_managed = ", ".join(f"'{h}'" for h in MANAGED_HEADERS)

STATIC_HEADER_NAMES = Rule(
    id="static.header-names",
    cel=f"""
        !has(self.headers) || self.headers.all(h,
          h.matches('{HEADER_NAME_PATTERN}') && !(h.lowerAscii() in [{_managed}]))
    """,
    message=(
        "headers must be HTTP header names (letters, digits, '-') other than the ones the proxy manages: "
        + ", ".join(
            "-".join(w.upper() if w in ("te",) else w.capitalize() for w in h.split("-"))
            for h in MANAGED_HEADERS
        )
    ),
    check=lambda s: (
        s.headers is None
        or all(_HEADER_NAME.fullmatch(h) and h.lower() not in MANAGED_HEADERS for h in s.headers)
    ),
    field_path=".headers",
)

STATIC_HEADER_VALUES = Rule(
    id="static.header-values",
    cel=r"!has(self.headers) || self.headers.all(h, !self.headers[h].matches('[\\r\\n\\x00]'))",
    message=(
        "header values must not contain a line break (CR or LF) or NUL: each header is one line of "
        "the response"
    ),
    check=lambda s: s.headers is None or not any(_LINE_BREAK_OR_NUL.search(v) for v in s.headers.values()),
    field_path=".headers",
)

# --- adaptive, override ----------------------------------------------------------------------------

RANGE_ORDER = Rule(
    id="range.min-le-max",
    cel="self.min <= self.max",
    message="min must not exceed max",
    check=lambda s: s.min <= s.max,
    field_path=".min",
)

DURATION_RANGE_ORDER = Rule(
    id="durationRange.min-le-max",
    cel="duration(self.min) <= duration(self.max)",
    message="min must not be longer than max",
    check=lambda s: s.min.nanoseconds <= s.max.nanoseconds,
    field_path=".min",
)

OVERRIDE_UNTIL_FOR_FORCE_OPEN = Rule(
    id="override.until-for-ForceOpen",
    cel="self.mode != 'ForceOpen' || has(self.until)",
    message=(
        "until is required when the override mode is ForceOpen: a forced-open breaker must end on its own, "
        "e.g. until: 2030-01-01T12:00:00Z"
    ),
    check=lambda s: s.mode != "ForceOpen" or _has(s.until),
    field_path=".until",
    reason="FieldValueRequired",
)

ADAPTIVE_HYSTERESIS_WITHIN_WINDOW = Rule(
    id="adaptive.hysteresis-within-window",
    cel="duration(self.hysteresis) <= duration(self.historyWindow)",
    message=(
        "hysteresis must not be longer than historyWindow: the evidence for a change must fit in the history"
    ),
    check=lambda s: s.hysteresis.nanoseconds <= s.history_window.nanoseconds,
    field_path=".hysteresis",
)

ALL_RULES: tuple[Rule, ...] = (
    HOST_NUMERIC_IS_IPV4,
    DURATION,
    TIMESTAMP,
    SELECTOR_VALUES_REQUIRED,
    SELECTOR_VALUES_FORBIDDEN,
    SELECTOR_NOT_EMPTY,
    SELECTOR_LABEL_KEYS,
    LISTEN_PORT_RESERVED,
    SIDECAR_PORTS_DISTINCT,
    UPSTREAM_NAMES_UNIQUE,
    LISTEN_PORTS_UNIQUE,
    LISTEN_PORT_OR_TRANSPARENT,
    TRANSPARENT_TARGETS_UNIQUE,
    SLOW_CALLS_WITHIN_TIMEOUT,
    PER_TRY_TIMEOUT_WITHIN_TIMEOUT,
    TRIP_NEEDS_A_RULE,
    WINDOW_COUNT_SHAPE,
    WINDOW_TIME_SHAPE,
    MINIMUM_CALLS_WITHIN_COUNT_WINDOW,
    FAILURES_COUNT_SOMETHING,
    OPEN_MAX_DURATION,
    HALF_OPEN_SUCCESSES,
    FALLBACK_STATIC_REQUIRED,
    FALLBACK_STATIC_ONLY_WITH_STATIC,
    FALLBACK_CACHED_ONLY_WITH_CACHED,
    STATIC_HEADER_NAMES,
    STATIC_HEADER_VALUES,
    RANGE_ORDER,
    DURATION_RANGE_ORDER,
    ADAPTIVE_HYSTERESIS_WITHIN_WINDOW,
    OVERRIDE_UNTIL_FOR_FORCE_OPEN,
)
"""Every rule, in the order the API reference lists them."""
