"""The sidecar's plain parser (api/plain/) against the models it stands in for (api/sidecar.py).

The models are the definition: fed the same documents, the plain parser must give the same verdict,
the same values (the same canonical JSON, so the same effective hash) and the same error messages.
"""

from __future__ import annotations

import json
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from breakwater.api import bundle as bundles
from breakwater.api import defaultsgen
from breakwater.api import report as reports
from breakwater.api import sidecar as models
from breakwater.api.plain import bundle as plain_bundle
from breakwater.api.plain import fields
from breakwater.api.plain import parse as plain
from breakwater.api.plain import report as plain_report
from breakwater.api.plain import sidecar as plain_types
from breakwater.breaker.settings import Mode, State

# Values of every JSON type, with the words and numbers the schema knows, so that mutations land on
# both sides of every check (bounds, patterns, enums) and on the lax conversions (1 for true, 5.0 for 5).
WORDS = [
    *("", "a", "A", "payments", "a\n", "-a", "a" * 64, "x-a", "Connection", "bad name", "127.0.0.1", "::1"),
    *("::0001", "0.0.0.0", "1.2.3", " H.Example. ", "h/x", "5xx", "503", "99", "429", "timeout", "reset"),
    *("connect-failure", "Enforce", "Observe", "ForceOpen", "Disabled", "enforce", "Count", "Time"),
    *("None", "Static", "Cached", "PassThrough", "Refuse", "line\nbreak"),
]
SCALARS = st.one_of(
    st.none(),
    st.booleans(),
    st.sampled_from([-1, 0, 1, 2, 3, 5, 10, 11, 80, 199, 200, 503, 599, 600, 15020, 15080, 65535, 65536]),
    st.integers(),
    st.sampled_from([0.0, 0.5, 1.0, 2.0, 2.5, 50.0, 100.0, 100.5, -0.1, 1e300]),
    st.floats(allow_nan=False, allow_infinity=False),
    st.sampled_from(WORDS),
    st.text(max_size=4),
)
ANY_JSON = st.recursive(
    SCALARS,
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.sampled_from(WORDS), inner, max_size=3),
    max_leaves=6,
)


def _pick(*values: Any) -> st.SearchStrategy[Any]:
    return st.sampled_from(values)


BREAKER = st.fixed_dictionaries(
    {},
    optional={
        "consecutiveFailures": _pick(None, 0, 1, 5, 2.0, True),
        "failureRatePercent": _pick(None, 0, 50, 100, 100.5, 25.5),
        "slowCallPercent": _pick(None, 50, 0),
        "slowCallSeconds": _pick(None, 0.5, 0, -1),
        "minimumCalls": _pick(1, 0, 20),
        "windowKind": _pick("Count", "Time", "count"),
        "windowSize": _pick(1, 0, 100),
        "windowSeconds": _pick(30, 0.5, 0),
        "openSeconds": _pick(0, 1, 60, 500, -1),
        "openMaxSeconds": _pick(0.5, 300, 1000),
        "backoffMultiplier": _pick(1, 2.0, 0.5),
        "jitter": _pick(0, 0.2, 1, 0.99),
        "halfOpenPermittedCalls": _pick(1, 3, 0),
        "halfOpenSuccessesToClose": _pick(1, 3, 0),
        "halfOpenMaxWaitSeconds": _pick(None, 5, 0),
    },
)
UPSTREAM = st.fixed_dictionaries(
    {
        "name": _pick("a", "b", "payments", "a.b-c"),
        "host": _pick("h", "127.0.0.1", "H.example."),
        "port": _pick(1, 80, 8080),
    },
    optional={
        "policy": _pick("", "ns/p"),
        "listenPort": _pick(None, 0, 15001, 15002, 15020, 15080),
        "mode": _pick("Enforce", "Observe", "ForceOpen", "Disabled"),
        "modeUntil": _pick(None, 1.5, 1e9, 0),
        "modeAfter": _pick(None, "Enforce", "Disabled"),
        "fleetOpen": _pick(False, True, 1, 0),
        "breaker": BREAKER,
        "failures": st.fixed_dictionaries(
            {},
            optional={
                "statusCodes": st.lists(_pick("5xx", "503", "429", "99", "4xx"), max_size=3),
                "timeouts": st.booleans(),
                "connectErrors": st.booleans(),
                "resets": st.booleans(),
            },
        ),
        "timeoutSeconds": _pick(0.5, 2, 30, 0),
        "fallback": st.fixed_dictionaries(
            {},
            optional={
                "kind": _pick("None", "Static", "Cached"),
                "status": _pick(200, 503, 599, 600),
                "headers": st.dictionaries(
                    _pick("x-a", "Content-Type", "Connection", "bad name"), _pick("v", "a\nb"), max_size=2
                ),
                "body": _pick("", "sorry"),
                "maxAgeSeconds": _pick(1, 300.0, 0),
                "maxEntries": _pick(1, 1000, 0, 1_000_001),
                "maxBytes": _pick(1, 1024, 0),
            },
        ),
        "bulkhead": st.fixed_dictionaries(
            {}, optional={"maxConcurrent": _pick(None, 1, 10, 0), "maxPending": _pick(0, 5, -1)}
        ),
        "retry": st.fixed_dictionaries(
            {},
            optional={
                "attempts": _pick(1, 3, 10, 11, 0),
                "perTryTimeoutSeconds": _pick(None, 0.5, 0),
                "budgetPercent": _pick(0, 20, 100, 101),
                "retryOn": st.lists(_pick("5xx", "reset", "timeout", "503", "bogus"), max_size=3),
            },
        ),
    },
)
CONFIG = st.fixed_dictionaries(
    {},
    optional={
        "version": _pick(1, 2, 1.0),
        "configHash": _pick("", "abc"),
        "generation": _pick(0, 3, -1),
        "listenAddress": _pick("127.0.0.1", "::1", "127.0.0.2", "x"),
        "admin": st.fixed_dictionaries(
            {}, optional={"port": _pick(15020, 0, 15080, 70000), "address": _pick("0.0.0.0", "::", "nope")}
        ),
        "forwardProxy": st.fixed_dictionaries(
            {},
            optional={
                "enabled": st.booleans(),
                "port": _pick(15080, 15020, 0),
                "unknownHosts": _pick("PassThrough", "Refuse", "refuse"),
            },
        ),
        "upstreams": st.lists(UPSTREAM, max_size=3),
    },
)


def _snake(key: str) -> str:
    return "".join(f"_{c.lower()}" if c.isupper() else c for c in key)


@st.composite
def documents(draw: st.DrawFn) -> dict[str, Any]:
    """A config that is mostly plausible, then a few mutations anywhere in it: a value of any JSON type,
    a key dropped, an unknown key, a key spelt in snake_case (the models read those too)."""
    doc = draw(CONFIG)
    for _ in range(draw(st.integers(0, 3))):
        parent, key = draw(_place(doc))
        how = draw(st.sampled_from(["value", "drop", "unknown", "snake"]))
        if how == "value" and key is not None:
            parent[key] = draw(ANY_JSON)
        elif how == "drop" and key is not None and isinstance(parent, dict):
            del parent[key]
        elif how == "unknown" and isinstance(parent, dict):
            parent[draw(st.sampled_from(WORDS))] = draw(ANY_JSON)
        elif how == "snake" and isinstance(key, str) and isinstance(parent, dict):
            parent[_snake(key)] = parent.pop(key)
    return doc


@st.composite
def _place(draw: st.DrawFn, doc: dict[str, Any]) -> tuple[Any, Any]:
    """A container in `doc` and one of its keys or indexes (None when it is empty)."""
    node: Any = doc
    while True:
        keys = list(node) if isinstance(node, dict) else list(range(len(node)))
        if not keys:
            return node, None
        key = draw(st.sampled_from(keys))
        child = node[key]
        if not isinstance(child, dict | list) or not child or draw(st.booleans()):
            return node, key
        node = child


def _verdict(parse: Any, doc: Any) -> tuple[str, Any]:
    try:
        return "valid", json.loads(parse(doc).to_json())
    except models.SidecarConfigError as exc:
        return "invalid", str(exc)


@settings(max_examples=600, suppress_health_check=[HealthCheck.too_slow])
@given(documents())
def test_the_plain_parser_and_the_models_give_the_same_verdict_values_and_messages(
    doc: dict[str, Any],
) -> None:
    assert _verdict(plain.parse_sidecar_config, doc) == _verdict(models.parse_sidecar_config, doc)


@pytest.mark.parametrize(
    "upstream",
    [{"port": False}, {"port": 1, "timeoutSeconds": False}, {"port": 1, "listenPort": 70000.0}],
)
def test_a_value_out_of_bounds_is_quoted_as_written(upstream: dict[str, Any]) -> None:
    """``false`` for a port is read as 0, out of bounds: the message quotes ``false``, as the models'."""
    doc = {"upstreams": [{"name": "a", "host": "h", **upstream}]}
    verdict = _verdict(plain.parse_sidecar_config, doc)
    assert verdict[0] == "invalid"
    assert verdict == _verdict(models.parse_sidecar_config, doc)


@settings(max_examples=150, suppress_health_check=[HealthCheck.too_slow])
@given(documents())
def test_what_the_models_write_the_plain_parser_reads_without_them(doc: dict[str, Any]) -> None:
    try:
        canonical = json.loads(models.parse_sidecar_config(doc).to_json())
    except models.SidecarConfigError:
        return
    errors = fields.Errors()
    config = plain.read_config(errors, (), canonical)  # raises NeedsModels if it could not decide
    assert not errors.records
    assert config.to_json() == models.parse_sidecar_config(canonical).to_json()
    assert config.effective_hash() == models.parse_sidecar_config(canonical).effective_hash()


def test_the_plain_defaults_are_generated_from_the_models() -> None:
    """api/plain/defaults.py is written by `make generate`: a hand edit, or a default changed in
    api/spec.py or api/sidecar.py without regenerating, fails here."""
    assert defaultsgen.PATH.read_text(encoding="utf-8") == defaultsgen.defaults_source(), (
        f"{defaultsgen.PATH} drifted from the models: run `make generate`"
    )


def test_the_defaults_are_the_models_defaults() -> None:
    minimal = {"upstreams": [{"name": "a", "host": "h", "port": 1}]}
    assert plain.parse_sidecar_config(minimal).to_json() == models.parse_sidecar_config(minimal).to_json()
    assert plain_types.PlainSidecarConfig().to_json() == models.SidecarConfig().to_json()


@pytest.mark.parametrize(
    "doc",
    [
        {"upstreams": [{"name": "a", "host": "h", "port": "8080"}]},  # text the models turn into a number
        {"forwardProxy": {"enabled": "yes"}},
        {"upstreams": [{"name": "a", "host": "h", "port": "http"}]},
    ],
)
def test_text_for_a_number_or_a_flag_is_decided_by_the_models(doc: dict[str, Any]) -> None:
    with pytest.raises(fields.NeedsModels):
        plain.read_config(fields.Errors(), (), doc)
    assert _verdict(plain.parse_sidecar_config, doc) == _verdict(models.parse_sidecar_config, doc)


@st.composite
def bundle_documents(draw: st.DrawFn) -> dict[str, Any]:
    doc = {"policy": "shop/a", "selector": {"matchLabels": {"app": "checkout"}}}
    doc.update(
        draw(
            st.fixed_dictionaries(
                {},
                optional={
                    "version": _pick(1, 2),
                    "uid": _pick("", "u1"),
                    "created": _pick("", "2026-01-01T00:00:00Z"),
                    "generation": _pick(0, 4, -1),
                    "transparent": st.booleans(),
                    "upstreams": st.lists(UPSTREAM, max_size=2),
                },
            )
        )
    )
    for _ in range(draw(st.integers(0, 2))):
        parent, key = draw(_place(doc))
        if key is not None:
            parent[key] = draw(ANY_JSON)
    return doc


def _bundle_values(bundle: Any) -> tuple[Any, ...]:
    ups = [json.loads(json.dumps(_upstream_dict(u))) for u in bundle.upstreams]
    return (bundle.version, bundle.policy, bundle.uid, bundle.created, bundle.generation, bundle.selector,
            bundle.transparent, ups)  # fmt: skip


def _upstream_dict(up: Any) -> dict[str, Any]:
    return up.to_dict() if isinstance(up, plain_types.PlainUpstreamConfig) else up.model_dump(by_alias=True)


@settings(max_examples=200, suppress_health_check=[HealthCheck.too_slow])
@given(bundle_documents())
def test_a_bundle_reads_as_the_model_reads_it(doc: dict[str, Any]) -> None:
    try:
        expected: Any = _bundle_values(bundles.PolicyBundle.model_validate_json(json.dumps(doc)))
    except ValueError:
        expected = "invalid"
    try:
        got: Any = _bundle_values(plain_bundle.parse_bundle(json.dumps(doc)))
    except plain_bundle.BundleError:
        got = "invalid"
    assert got == expected


@settings(max_examples=150, suppress_health_check=[HealthCheck.too_slow])
@given(st.one_of(documents(), st.none(), ANY_JSON), _pick("h1", "", 5, None), st.booleans())
def test_a_config_reply_reads_as_the_model_reads_it(config: Any, config_hash: Any, newer: bool) -> None:
    doc = {"configHash": config_hash, "config": config}
    if newer:
        doc["fromANewerOperator"] = 1  # ignored by both
    body = json.dumps(doc)
    try:
        model = reports.ConfigReply.model_validate_json(body)
        expected: Any = (model.config_hash, model.config and json.loads(model.config.to_json()))
    except ValueError:
        expected = "invalid"
    try:
        reply = plain_report.PlainConfigReply.from_json(body)
        got: Any = (reply.config_hash, reply.config and json.loads(reply.config.to_json()))
    except models.SidecarConfigError:
        got = "invalid"
    assert got == expected


_STATES = _pick(*State)
_COUNTS = st.integers(0, 2**40)
_RATES = st.none() | st.floats(0, 1)
UPSTREAM_REPORTS = st.builds(
    plain_report.PlainUpstreamReport,
    name=_pick("a", "payments"),
    state=_STATES,
    policy=_pick("", "shop/a"),
    mode=_pick(*Mode),
    calls=_COUNTS,
    failures=_COUNTS,
    rejections=_COUNTS,
    would_reject=_COUNTS,
    trips=_COUNTS,
    window_calls=_COUNTS,
    failure_rate=_RATES,
    slow_rate=_RATES,
    state_since=st.none() | st.floats(0, 2e9),
    latency=st.lists(_COUNTS, max_size=14),
)
TRANSITIONS = st.builds(
    plain_report.PlainTransitionReport,
    upstream=_pick("a", "payments"),
    from_state=_STATES,
    to_state=_STATES,
    at=st.floats(0, 2e9),
    policy=_pick("", "shop/a"),
    reason=st.text(max_size=64),
)


@settings(max_examples=150)
@given(
    st.builds(
        plain_report.PlainSidecarReport,
        namespace=_pick("shop"),
        pod=_pick("checkout-1"),
        pod_uid=_pick("", "uid-1"),
        config_hash=_pick("", "abc"),
        seq=_COUNTS,
        sent_at=st.floats(0, 2e9),
        upstreams=st.lists(UPSTREAM_REPORTS, max_size=3),
        transitions=st.lists(TRANSITIONS, max_size=3),
    )
)
def test_a_report_the_sidecar_writes_is_what_the_model_reads(report: plain_report.PlainSidecarReport) -> None:
    written = json.loads(report.to_json())
    assert reports.SidecarReport.model_validate_json(report.to_json()).model_dump(
        mode="json", by_alias=True
    ) == (written)
