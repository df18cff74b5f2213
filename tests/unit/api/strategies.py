"""Hypothesis strategies for valid CircuitBreakerPolicy specs, in their wire (camelCase) form."""

from __future__ import annotations

from typing import Any

from hypothesis import strategies as st

from breakwater.api.constants import RESERVED_LISTEN_PORTS
from breakwater.api.durations import format_duration

MS = 1_000_000

dns_label = st.from_regex(r"\A[a-z0-9]([-a-z0-9]{0,10}[a-z0-9])?\Z")
label_value = st.from_regex(r"\A([A-Za-z0-9]([-A-Za-z0-9_.]{0,8}[A-Za-z0-9])?)?\Z")


def durations(min_ms: int = 1, max_ms: int = 3_600_000) -> st.SearchStrategy[str]:
    return st.integers(min_ms, max_ms).map(lambda ms: format_duration(ms * MS))


def optional(strategy: st.SearchStrategy[Any]) -> st.SearchStrategy[Any]:
    return st.none() | strategy


def objects(**fields: st.SearchStrategy[Any]) -> st.SearchStrategy[dict[str, Any]]:
    """Dicts with some of `fields` (a field drawn as None is left out)."""
    return st.fixed_dictionaries({}, optional={k: v for k, v in fields.items()}).map(
        lambda d: {k: v for k, v in d.items() if v is not None}
    )


selector = st.one_of(
    st.fixed_dictionaries({"matchLabels": st.dictionaries(dns_label, label_value, min_size=1, max_size=3)}),
    st.fixed_dictionaries(
        {
            "matchExpressions": st.lists(
                st.one_of(
                    st.fixed_dictionaries(
                        {
                            "key": dns_label,
                            "operator": st.sampled_from(["In", "NotIn"]),
                            "values": st.lists(label_value, min_size=1, max_size=3),
                        }
                    ),
                    st.fixed_dictionaries(
                        {"key": dns_label, "operator": st.sampled_from(["Exists", "DoesNotExist"])}
                    ),
                ),
                min_size=1,
                max_size=3,
            )
        }
    ),
)

window = st.one_of(
    st.fixed_dictionaries({"kind": st.just("Count"), "size": st.integers(100, 1000)}),
    st.fixed_dictionaries({"kind": st.just("Time"), "duration": durations(1000, 600_000)}),
)
trip = objects(
    consecutiveFailures=st.integers(1, 50),
    failureRate=objects(percent=st.integers(1, 100), minimumCalls=st.integers(1, 100), window=window),
    slowCalls=st.fixed_dictionaries(
        {"slowerThan": durations(1, 999)}, optional={"percent": st.integers(1, 100)}
    ),
)
failures = objects(
    statusCodes=st.lists(st.sampled_from(["5xx", "4xx", "503", "429", "502"]), unique=True, min_size=1),
    timeouts=st.booleans(),
    connectErrors=st.booleans(),
    resets=st.booleans(),
)
open_ = objects(
    duration=durations(1000, 60_000),
    maxDuration=durations(60_000, 600_000),
    backoffMultiplier=st.floats(1, 10),
    jitter=st.floats(0, 0.99),
)
half_open = st.just({}) | st.integers(1, 10).flatmap(
    lambda permitted: st.fixed_dictionaries(
        {"permittedCalls": st.just(permitted)},
        optional={"successesToClose": st.integers(1, permitted), "maxWait": durations()},
    )
)
fallback = st.one_of(
    st.just({"kind": "None"}),
    st.fixed_dictionaries(
        {
            "kind": st.just("Static"),
            "static": objects(
                headers=st.dictionaries(
                    st.sampled_from(["Content-Type", "Retry-After", "X-Degraded"]),
                    # a header value is one line of the response: no CR, LF or NUL (the CRD's rule)
                    st.text(st.characters(blacklist_characters="\r\n\x00"), max_size=20),
                ),
                body=st.text(max_size=50),
            ).map(lambda d: {"status": 503, **d}),
        }
    ),
    st.fixed_dictionaries(
        {"kind": st.just("Cached")},
        optional={
            "cached": objects(
                maxAge=durations(), maxEntries=st.integers(1, 10_000), maxBytes=st.integers(1, 1 << 30)
            )
        },
    ),
)
bulkhead = st.fixed_dictionaries(
    {"maxConcurrent": st.integers(1, 1000)}, optional={"maxPending": st.integers(0, 1000)}
)
retry = objects(
    attempts=st.integers(1, 10),
    perTryTimeout=durations(1, 1000),
    budgetPercent=st.integers(0, 100),
    retryOn=st.lists(st.sampled_from(["connect-failure", "reset", "timeout", "5xx", "503"]), unique=True),
)
overrides = objects(
    trip=trip,
    failures=failures,
    timeout=durations(1000, 60_000),
    open=open_,
    halfOpen=half_open,
    fallback=fallback,
    bulkhead=bulkhead,
    retry=retry,
)


@st.composite
def upstream_lists(draw: st.DrawFn, transparent: bool) -> list[dict[str, Any]]:
    names = draw(st.lists(dns_label, min_size=1, max_size=4, unique=True))
    ports = draw(
        st.lists(
            st.integers(1024, 65535).filter(lambda p: p not in RESERVED_LISTEN_PORTS),
            min_size=len(names),
            max_size=len(names),
            unique=True,
        )
    )
    upstreams = []
    for index, (name, port) in enumerate(zip(names, ports, strict=True)):
        upstream: dict[str, Any] = {"name": name, "host": f"{name}.svc.cluster.local", "port": 8000 + index}
        if not transparent or draw(st.booleans()):
            upstream["listenPort"] = port
        extra = draw(optional(overrides))
        if extra is not None:
            upstream["overrides"] = extra
        upstreams.append(upstream)
    return upstreams


@st.composite
def specs(draw: st.DrawFn) -> dict[str, Any]:
    """A spec in wire form; callers `assume` the cross-section timing rules hold."""
    transparent = draw(st.booleans())
    spec: dict[str, Any] = {
        "selector": draw(selector),
        "upstreams": draw(upstream_lists(transparent)),
        "transparent": transparent,
    }
    spec.update(
        draw(
            objects(
                mode=st.sampled_from(["Enforce", "Observe", "ForceOpen", "Disabled"]),
                override=st.fixed_dictionaries(
                    {
                        "mode": st.just("ForceOpen"),
                        "until": st.just("2030-01-01T12:00:00Z"),
                        "reason": st.just("INC-1"),
                    }
                ),
                trip=trip,
                failures=failures,
                timeout=durations(1000, 60_000),
                open=open_,
                halfOpen=half_open,
                fallback=fallback,
                bulkhead=bulkhead,
                retry=retry,
                adaptive=objects(
                    enabled=st.booleans(),
                    historyWindow=durations(600_000, 86_400_000),
                    hysteresis=durations(1000, 600_000),
                    minimumVolume=st.integers(1, 100_000),
                ),
                coordination=objects(quorumPercent=st.integers(1, 100)),
            )
        )
    )
    return spec
