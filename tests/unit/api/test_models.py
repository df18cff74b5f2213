"""The models: defaults, strictness, per-upstream settings, and lossless round-trips (property tests)."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import pytest
from hypothesis import HealthCheck, assume, given, settings
from pydantic import ValidationError

from breakwater.api import (
    CircuitBreakerPolicySpec,
    CircuitBreakerPolicyStatus,
    Condition,
    Duration,
    FallbackKind,
    Mode,
    PolicyError,
    UpstreamState,
    UpstreamStatus,
    WindowKind,
    parse_policy,
    parse_spec,
)
from breakwater.api.rules import PER_TRY_TIMEOUT_WITHIN_TIMEOUT, SLOW_CALLS_WITHIN_TIMEOUT
from tests.unit.api.invalid_table import base_manifest
from tests.unit.api.strategies import specs

TIMING_RULES = {SLOW_CALLS_WITHIN_TIMEOUT.id, PER_TRY_TIMEOUT_WITHIN_TIMEOUT.id}

MINIMAL: dict[str, Any] = {
    "selector": {"matchLabels": {"app": "checkout"}},
    "upstreams": [
        {"name": "payments", "host": "payments.shop.svc.cluster.local", "port": 8080, "listenPort": 15210}
    ],
}


def test_a_minimal_spec_gets_the_documented_defaults() -> None:
    spec = parse_spec(MINIMAL)
    assert spec.mode is Mode.ENFORCE
    assert spec.transparent is False
    assert spec.override is None
    assert spec.trip.consecutive_failures == 5
    assert spec.trip.failure_rate is None
    assert spec.trip.slow_calls is None
    assert spec.failures.status_codes == ["5xx"]
    assert spec.failures.timeouts
    assert spec.failures.connect_errors
    assert spec.failures.resets
    assert spec.timeout == "2s"
    assert spec.timeout.seconds == 2.0
    assert (spec.open.duration, spec.open.max_duration) == ("60s", "5m")
    assert (spec.open.backoff_multiplier, spec.open.jitter) == (2.0, 0.2)
    assert spec.half_open.permitted_calls == 3
    assert spec.half_open.successes_to_close is None
    assert spec.fallback.kind is FallbackKind.NONE
    assert spec.bulkhead is None
    assert spec.retry is None
    assert spec.adaptive.enabled is False
    assert spec.adaptive.bounds.open_duration.min == "10s"


def test_a_failure_rate_given_alone_gets_a_30s_time_window() -> None:
    spec = parse_spec({**MINIMAL, "trip": {"failureRate": {}}})
    rate = spec.trip.failure_rate
    assert rate is not None
    assert (rate.percent, rate.minimum_calls) == (50, 20)
    assert rate.window.kind is WindowKind.TIME
    assert rate.window.duration == "30s"
    assert rate.window.size is None


def test_cached_fallback_settings_default_when_left_out() -> None:
    spec = parse_spec({**MINIMAL, "fallback": {"kind": "Cached"}})
    assert spec.fallback.cached is None
    assert spec.fallback.cached_settings.max_age == "5m"
    assert spec.fallback.cached_settings.max_entries == 1000


@pytest.mark.parametrize(
    ("patch", "where"),
    [
        ({"timeout": 5}, "spec.timeout"),
        ({"transparent": "true"}, "spec.transparent"),
        ({"trip": {"consecutiveFailures": "5"}}, "spec.trip.consecutiveFailures"),
        ({"trip": {"consecutive_failures": 5}}, "spec.trip.consecutive_failures"),
        ({"open": {"jitter": "0.1"}}, "spec.open.jitter"),
    ],
)
def test_manifests_are_read_as_strictly_as_the_api_server_reads_them(
    patch: dict[str, Any], where: str
) -> None:
    with pytest.raises(PolicyError) as info:
        parse_spec({**MINIMAL, **patch})
    assert [p.path for p in info.value.problems] == [where]


def test_nulls_are_dropped_as_the_api_server_prunes_them() -> None:
    spec = parse_spec({**MINIMAL, "mode": None, "retry": None, "trip": {"failureRate": None}})
    assert spec.mode is Mode.ENFORCE
    assert spec.retry is None
    assert spec.trip.failure_rate is None


def test_python_code_may_build_specs_by_attribute_name() -> None:
    spec = CircuitBreakerPolicySpec.model_validate(
        {**MINIMAL, "half_open": {"permitted_calls": 5}, "timeout": Duration("3s")}
    )
    assert spec.half_open.permitted_calls == 5
    assert spec.to_dict()["halfOpen"] == {"permittedCalls": 5}


def test_specs_are_immutable() -> None:
    spec = parse_spec(MINIMAL)
    with pytest.raises(ValidationError):
        spec.mode = Mode.OBSERVE  # type: ignore[misc]


def test_an_upstream_override_section_replaces_the_policys_section_whole() -> None:
    spec = parse_spec(
        {
            **MINIMAL,
            "upstreams": [
                *MINIMAL["upstreams"],
                {
                    "name": "ledger",
                    "host": "ledger",
                    "port": 80,
                    "listenPort": 15211,
                    "overrides": {"timeout": "10s", "trip": {"failureRate": {"percent": 30}}},
                },
            ],
            "trip": {"consecutiveFailures": 10},
            "retry": {"attempts": 3},
        }
    )
    payments, ledger = spec.settings_for("payments"), spec.settings_for("ledger")
    assert payments.trip.consecutive_failures == 10
    assert payments.timeout == "2s"
    assert ledger.timeout == "10s"
    assert ledger.trip.consecutive_failures == 5  # the section's default, not the policy's 10
    assert ledger.trip.failure_rate is not None
    assert ledger.trip.failure_rate.percent == 30
    assert ledger.retry == payments.retry == spec.retry
    with pytest.raises(KeyError):
        spec.settings_for("nope")


def test_parse_policy_reads_a_whole_object_with_its_status() -> None:
    manifest = {
        **base_manifest(),
        "metadata": {"name": "p", "namespace": "shop", "generation": 3, "uid": "abc", "managedFields": []},
        "status": {
            "observedGeneration": 3,
            "conditions": [{"type": "Ready", "status": "True", "lastTransitionTime": "2030-01-01T00:00:00Z"}],
            "upstreams": [{"name": "payments", "state": "Open", "open": 3, "closed": 9, "failureRate": 0.41}],
            "summary": {"state": "Open", "open": "3/12"},
            "somethingNewer": {"kept": True},
        },
    }
    policy = parse_policy(manifest)
    assert policy.metadata.generation == 3
    assert policy.status is not None
    assert policy.status.upstreams[0].state is UpstreamState.OPEN
    ready = policy.status.condition("Ready")
    assert ready is not None
    assert ready.last_transition_time == datetime(2030, 1, 1, tzinfo=UTC)
    assert policy.status.to_dict()["somethingNewer"] == {"kept": True}


def test_status_models_are_lenient_but_typed() -> None:
    status = CircuitBreakerPolicyStatus.model_validate(
        {"observedGeneration": "4", "upstreams": [{"name": "x", "open": "2", "effective": {"extra": 1}}]}
    )
    assert status.observed_generation == 4
    assert status.upstreams[0].open == 2
    with pytest.raises(ValidationError):
        UpstreamStatus.model_validate({"name": "x", "state": "Exploded"})


def test_status_is_written_in_camel_case_with_rfc3339_times() -> None:
    moment = datetime(2030, 1, 1, 12, tzinfo=UTC)
    status = CircuitBreakerPolicyStatus(
        observed_generation=2,
        conditions=[
            Condition(type="Accepted", status="True", reason="Rendered", last_transition_time=moment)
        ],
        upstreams=[UpstreamStatus(name="payments", half_open=1, would_open=2, last_transition_time=moment)],
    )
    out = status.to_dict()
    assert out["conditions"][0]["lastTransitionTime"] == "2030-01-01T12:00:00Z"
    assert out["upstreams"][0]["halfOpen"] == 1
    assert out["upstreams"][0]["wouldOpen"] == 2
    assert "pods" not in out


@settings(max_examples=150, suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much])
@given(specs())
def test_a_spec_round_trips_through_its_wire_form(wire: dict[str, Any]) -> None:
    try:
        spec = parse_spec(wire)
    except PolicyError as exc:
        # The strategy does not coordinate durations across sections: only those rules may reject.
        assume(not all(p.rule in TIMING_RULES for p in exc.problems))
        raise AssertionError(f"a drawn spec was rejected: {exc}") from None
    dumped = spec.to_dict()
    again = parse_spec(dumped)
    assert again == spec
    assert again.to_dict() == dumped
    for key, value in wire.items():
        if not isinstance(value, dict | list):
            assert dumped[key] == value, key  # scalars survive exactly as written


@settings(max_examples=100)
@given(specs())
def test_every_upstream_has_complete_settings(wire: dict[str, Any]) -> None:
    try:
        spec = parse_spec(wire)
    except PolicyError as exc:
        assume(not all(p.rule in TIMING_RULES for p in exc.problems))
        raise AssertionError(f"a drawn spec was rejected: {exc}") from None
    for upstream in spec.upstreams:
        settings_ = spec.settings_for(upstream.name)
        assert settings_.timeout.seconds > 0
        assert settings_.open.duration.nanoseconds <= settings_.open.max_duration.nanoseconds
