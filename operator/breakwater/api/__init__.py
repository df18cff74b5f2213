"""The CircuitBreakerPolicy API (pydantic models) and the sidecar configuration schema.

The models here are the one source of the CRD (`breakwater crd`), of the API reference
(`breakwater api-docs`) and of offline validation (`breakwater validate`). Parse what the API server
sends with `parse_policy` / `parse_spec`; write status with `CircuitBreakerPolicyStatus(...).to_dict()`.

The names below load their module on first use: importing one submodule (the sidecar imports
`api.constants`, `api.headers` and `api.plain`) does not load pydantic and every model with it.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from breakwater.api.constants import (
        API_VERSION,
        CRD_NAME,
        GROUP,
        KIND,
        PLURAL,
        SHORT_NAMES,
        VERSION,
    )
    from breakwater.api.policy import (
        CircuitBreakerPolicy,
        ObjectMeta,
        PolicyError,
        Problem,
        check_policy,
        is_policy_manifest,
        parse_policy,
        parse_spec,
    )
    from breakwater.api.scalars import (
        Duration,
        Timestamp,
    )
    from breakwater.api.spec import (
        Adaptive,
        Bulkhead,
        CachedFallback,
        CircuitBreakerPolicySpec,
        FailureRate,
        Failures,
        Fallback,
        FallbackKind,
        HalfOpen,
        LabelSelector,
        LabelSelectorRequirement,
        Mode,
        Open,
        Override,
        Retry,
        SelectorOperator,
        SlowCalls,
        StaticFallback,
        Trip,
        Upstream,
        UpstreamOverrides,
        UpstreamSettings,
        Window,
        WindowKind,
    )
    from breakwater.api.status import (
        CircuitBreakerPolicyStatus,
        Condition,
        ConditionStatus,
        EffectiveThresholds,
        PodCounts,
        StatusSummary,
        UpstreamState,
        UpstreamStatus,
    )

_LAZY = {
    "API_VERSION": "breakwater.api.constants",
    "CRD_NAME": "breakwater.api.constants",
    "GROUP": "breakwater.api.constants",
    "KIND": "breakwater.api.constants",
    "PLURAL": "breakwater.api.constants",
    "SHORT_NAMES": "breakwater.api.constants",
    "VERSION": "breakwater.api.constants",
    "CircuitBreakerPolicy": "breakwater.api.policy",
    "ObjectMeta": "breakwater.api.policy",
    "PolicyError": "breakwater.api.policy",
    "Problem": "breakwater.api.policy",
    "check_policy": "breakwater.api.policy",
    "is_policy_manifest": "breakwater.api.policy",
    "parse_policy": "breakwater.api.policy",
    "parse_spec": "breakwater.api.policy",
    "Duration": "breakwater.api.scalars",
    "Timestamp": "breakwater.api.scalars",
    "Adaptive": "breakwater.api.spec",
    "Bulkhead": "breakwater.api.spec",
    "CachedFallback": "breakwater.api.spec",
    "CircuitBreakerPolicySpec": "breakwater.api.spec",
    "FailureRate": "breakwater.api.spec",
    "Failures": "breakwater.api.spec",
    "Fallback": "breakwater.api.spec",
    "FallbackKind": "breakwater.api.spec",
    "HalfOpen": "breakwater.api.spec",
    "LabelSelector": "breakwater.api.spec",
    "LabelSelectorRequirement": "breakwater.api.spec",
    "Mode": "breakwater.api.spec",
    "Open": "breakwater.api.spec",
    "Override": "breakwater.api.spec",
    "Retry": "breakwater.api.spec",
    "SelectorOperator": "breakwater.api.spec",
    "SlowCalls": "breakwater.api.spec",
    "StaticFallback": "breakwater.api.spec",
    "Trip": "breakwater.api.spec",
    "Upstream": "breakwater.api.spec",
    "UpstreamOverrides": "breakwater.api.spec",
    "UpstreamSettings": "breakwater.api.spec",
    "Window": "breakwater.api.spec",
    "WindowKind": "breakwater.api.spec",
    "CircuitBreakerPolicyStatus": "breakwater.api.status",
    "Condition": "breakwater.api.status",
    "ConditionStatus": "breakwater.api.status",
    "EffectiveThresholds": "breakwater.api.status",
    "PodCounts": "breakwater.api.status",
    "StatusSummary": "breakwater.api.status",
    "UpstreamState": "breakwater.api.status",
    "UpstreamStatus": "breakwater.api.status",
}

__all__ = [
    "API_VERSION",
    "CRD_NAME",
    "GROUP",
    "KIND",
    "PLURAL",
    "SHORT_NAMES",
    "VERSION",
    "Adaptive",
    "Bulkhead",
    "CachedFallback",
    "CircuitBreakerPolicy",
    "CircuitBreakerPolicySpec",
    "CircuitBreakerPolicyStatus",
    "Condition",
    "ConditionStatus",
    "Duration",
    "EffectiveThresholds",
    "FailureRate",
    "Failures",
    "Fallback",
    "FallbackKind",
    "HalfOpen",
    "LabelSelector",
    "LabelSelectorRequirement",
    "Mode",
    "ObjectMeta",
    "Open",
    "Override",
    "PodCounts",
    "PolicyError",
    "Problem",
    "Retry",
    "SelectorOperator",
    "SlowCalls",
    "StaticFallback",
    "StatusSummary",
    "Timestamp",
    "Trip",
    "Upstream",
    "UpstreamOverrides",
    "UpstreamSettings",
    "UpstreamState",
    "UpstreamStatus",
    "Window",
    "WindowKind",
    "check_policy",
    "is_policy_manifest",
    "parse_policy",
    "parse_spec",
]


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted([*globals(), *_LAZY])
