"""The sidecar config schema (api/sidecar.py): it carries the engine's own settings, and the classifiers
compiled from it (proxy/classifiers.py)."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pytest

from breakwater.api.sidecar import (
    SidecarConfig,
    SidecarConfigError,
    UpstreamConfig,
    load_sidecar_config,
    parse_sidecar_config,
)
from breakwater.breaker import BreakerSettings, Mode, WindowKind
from breakwater.proxy.classifiers import (
    FailureKind,
    FailurePolicy,
    RetryPolicy,
    status_matcher,
)
from breakwater.proxy.upstream import authority_aliases

MINIMAL = {"upstreams": [{"name": "payments", "host": "payments.shop.svc.cluster.local", "port": 8080}]}


def test_a_minimal_document_gets_the_documented_defaults() -> None:
    cfg = parse_sidecar_config(json.dumps(MINIMAL))
    assert cfg.version == 1
    assert cfg.admin.port == 15200
    assert cfg.forward_proxy.enabled is False
    assert cfg.forward_proxy.port == 15201
    assert cfg.forward_proxy.unknown_hosts == "PassThrough"
    up = cfg.upstreams[0]
    assert up.mode == "Enforce"
    assert up.listen_port is None
    assert up.timeout_seconds == 2.0
    assert up.failures.status_codes == ["5xx"]
    assert (up.failures.timeouts, up.failures.connect_errors, up.failures.resets) == (True, True, True)
    assert up.fallback.kind == "None"
    assert up.fallback.status == 503
    assert up.fallback.max_bytes == 8 * 1024 * 1024
    assert up.bulkhead.max_concurrent is None
    assert up.bulkhead.max_pending == 0
    assert up.retry.attempts == 1
    assert up.retry.budget_percent == 20


def test_the_canonical_json_uses_camel_case_and_round_trips() -> None:
    cfg = parse_sidecar_config(MINIMAL)
    doc = json.loads(cfg.to_json())
    assert "configHash" in doc
    assert "forwardProxy" in doc
    assert doc["forwardProxy"]["unknownHosts"] == "PassThrough"
    up = doc["upstreams"][0]
    assert {"listenPort", "timeoutSeconds", "breaker", "failures", "fallback", "bulkhead", "retry"} <= set(up)
    assert {"consecutiveFailures", "halfOpenPermittedCalls", "halfOpenMaxWaitSeconds"} <= set(up["breaker"])
    assert {"perTryTimeoutSeconds", "budgetPercent", "retryOn"} <= set(up["retry"])
    assert parse_sidecar_config(cfg.to_json()) == cfg


def test_fields_may_be_given_by_python_name_too() -> None:
    up = UpstreamConfig(name="a", host="127.0.0.1", port=80, listen_port=15210, timeout_seconds=1.5)
    assert up.listen_port == 15210
    assert up.timeout_seconds == 1.5


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"surprise": 1}, "surprise: unknown field"),
        ({"version": 2}, "unsupported sidecar config version"),
        (
            {"upstreams": [{"name": "a", "host": "h", "port": 1}, {"name": "a", "host": "h", "port": 2}]},
            "twice",
        ),
        (
            {"upstreams": [{"name": "a", "host": "h", "port": 1, "listenPort": 15200}]},
            "listenPort 15200 is already used by admin",
        ),
        ({"upstreams": [{"name": "a", "host": "h", "port": 0}]}, r"upstreams\[0\].port"),
        ({"upstreams": [{"name": "a", "host": "h", "port": 1, "mode": "Sometimes"}]}, r"upstreams\[0\].mode"),
        (
            {"upstreams": [{"name": "a", "host": "h", "port": 1, "failures": {"statusCodes": ["5x"]}}]},
            "is not a status code",
        ),
        (
            {"upstreams": [{"name": "a", "host": "h", "port": 1, "breaker": {"slowCallPercent": 50}}]},
            r"upstreams\[0\].breaker: .*slowCallPercent=50.0: needs slowCallSeconds",
        ),
        (
            {"upstreams": [{"name": "a", "host": "h", "port": 1, "retry": {"retryOn": ["sometimes"]}}]},
            "is not a retry condition",
        ),
        (
            {
                "upstreams": [
                    {"name": "a", "host": "h", "port": 1, "fallback": {"headers": {"Content-Length": "1"}}}
                ]
            },
            "managed by the proxy",
        ),
        (  # a count window keeps a slot per call: no policy can ask for more than the spec's bound
            {
                "upstreams": [
                    {
                        "name": "a",
                        "host": "h",
                        "port": 1,
                        "breaker": {"windowKind": "Count", "windowSize": 10**12},
                    }
                ]
            },
            r"upstreams\[0\].breaker: .*windowSize=1000000000000: must be <= 100000",
        ),
        (
            {
                "upstreams": [
                    {"name": "a", "host": "h", "port": 1, "breaker": {"halfOpenPermittedCalls": 10**9}}
                ]
            },
            r"halfOpenPermittedCalls=1000000000: must be <= 1000",
        ),
        ({"upstreams": [{"name": "a", "host": "http://h/", "port": 1}]}, "is not a host name"),
        ({"listenAddress": "localhost"}, "is not an IP address"),
    ],
)
def test_an_invalid_document_is_refused_with_a_message_naming_the_field(
    change: dict[str, object], message: str
) -> None:
    doc = {**MINIMAL, **change}
    with pytest.raises(SidecarConfigError, match=message):
        parse_sidecar_config(doc, source="test")


def test_two_upstreams_on_one_target_are_ambiguous_only_for_the_forward_proxy() -> None:
    twins = [{"name": "a", "host": "h", "port": 1}, {"name": "b", "host": "h", "port": 1}]
    assert len(parse_sidecar_config({"upstreams": twins}).upstreams) == 2
    with pytest.raises(SidecarConfigError, match="both route h:1"):
        parse_sidecar_config({"upstreams": twins, "forwardProxy": {"enabled": True}})


def test_loading_a_file_that_is_not_json_raises_a_config_error_naming_the_file(tmp_path: Path) -> None:
    path = tmp_path / "bad.json"
    path.write_text("{not json")
    with pytest.raises(SidecarConfigError, match="not valid JSON") as info:
        load_sidecar_config(path)
    assert info.value.source == str(path)


def test_loading_a_missing_file_raises_a_config_error(tmp_path: Path) -> None:
    with pytest.raises(SidecarConfigError, match="cannot read"):
        load_sidecar_config(tmp_path / "absent.json")


def test_the_effective_hash_is_the_rendered_one_or_a_digest_of_the_content() -> None:
    rendered = parse_sidecar_config({**MINIMAL, "configHash": "abc123"})
    assert rendered.effective_hash() == "abc123"
    plain = parse_sidecar_config(MINIMAL)
    assert len(plain.effective_hash()) == 16
    assert plain.effective_hash() == parse_sidecar_config(MINIMAL).effective_hash()


def test_breaker_settings_carry_every_field_of_the_breaker_block_and_the_mode() -> None:
    up = UpstreamConfig.model_validate(
        {
            "name": "a",
            "host": "h",
            "port": 1,
            "mode": "Observe",
            "breaker": {
                "consecutiveFailures": None,
                "failureRatePercent": 50,
                "slowCallPercent": 80,
                "slowCallSeconds": 1.5,
                "minimumCalls": 10,
                "windowKind": "Time",
                "windowSize": 7,
                "windowSeconds": 12,
                "openSeconds": 3,
                "openMaxSeconds": 30,
                "backoffMultiplier": 1.5,
                "jitter": 0.1,
                "halfOpenPermittedCalls": 2,
                "halfOpenSuccessesToClose": 4,
                "halfOpenMaxWaitSeconds": 9,
            },
        }
    )
    assert up.mode is Mode.OBSERVE
    assert up.breaker == BreakerSettings(
        consecutive_failures=None,
        failure_rate_percent=50,
        slow_call_percent=80,
        slow_call_seconds=1.5,
        minimum_calls=10,
        window_kind=WindowKind.TIME,
        window_size=7,
        window_seconds=12,
        open_seconds=3,
        open_max_seconds=30,
        backoff_multiplier=1.5,
        jitter=0.1,
        half_open_permitted_calls=2,
        half_open_successes_to_close=4,
        half_open_max_wait_seconds=9,
    )


def test_a_missing_or_partial_breaker_block_takes_the_policy_defaults() -> None:
    from breakwater.api.spec import UpstreamSettings

    defaults = UpstreamSettings().breaker_settings()
    assert UpstreamConfig(name="a", host="h", port=1).breaker == defaults
    partial = UpstreamConfig.model_validate({"name": "a", "host": "h", "port": 1, "breaker": {"jitter": 0}})
    assert partial.breaker == dataclasses.replace(defaults, jitter=0.0)


def test_breaker_settings_the_engine_refuses_are_refused_with_the_config() -> None:
    bad = {"name": "a", "host": "h", "port": 1, "breaker": {"openSeconds": 10, "openMaxSeconds": 5}}
    with pytest.raises(SidecarConfigError, match=r"openMaxSeconds=5\.0: must be >= openSeconds"):
        parse_sidecar_config({"upstreams": [bad]})


def test_status_patterns_match_exact_codes_and_classes() -> None:
    table = status_matcher(["5xx", "429"])
    assert table[500]
    assert table[503]
    assert table[599]
    assert table[429]
    assert not table[200]
    assert not table[404]
    assert not table[430]


def test_the_failure_policy_counts_only_the_configured_transport_failures() -> None:
    policy = FailurePolicy.from_config(
        UpstreamConfig.model_validate(
            {"name": "a", "host": "h", "port": 1, "failures": {"statusCodes": ["503"], "timeouts": False}}
        ).failures
    )
    assert policy.is_failure_status(503)
    assert not policy.is_failure_status(500)
    assert not policy.counts(FailureKind.TIMEOUT)
    assert policy.counts(FailureKind.CONNECT)
    assert policy.counts(FailureKind.RESET)


def test_retry_conditions_compile_to_statuses_and_failure_kinds() -> None:
    retry = RetryPolicy.from_config(
        UpstreamConfig.model_validate(
            {
                "name": "a",
                "host": "h",
                "port": 1,
                "retry": {"attempts": 3, "retryOn": ["gateway-error", "429", "connect-failure", "timeout"]},
            }
        ).retry
    )
    assert retry.enabled
    assert retry.retries_status(502)
    assert retry.retries_status(504)
    assert retry.retries_status(429)
    assert not retry.retries_status(500)
    assert retry.kinds == {FailureKind.CONNECT, FailureKind.TIMEOUT}


def test_service_names_are_reachable_through_the_forward_proxy_by_their_short_forms() -> None:
    aliases = authority_aliases("payments.shop.svc.cluster.local", 8080)
    assert ("payments.shop.svc.cluster.local", 8080) in aliases
    assert ("payments.shop", 8080) in aliases
    assert ("payments.shop.svc", 8080) in aliases
    assert ("payments", 8080) not in aliases
    assert authority_aliases("127.0.0.1", 80) == [("127.0.0.1", 80)]


def test_an_empty_config_is_valid_and_has_no_upstreams() -> None:
    assert SidecarConfig().upstreams == []
