from __future__ import annotations

import pytest

from breakwater.injection.selectors import SelectorError, matches


def test_an_empty_selector_selects_every_pod() -> None:
    assert matches({}, {"app": "x"})


def test_a_missing_selector_selects_nothing() -> None:
    assert not matches(None, {"app": "x"})


@pytest.mark.parametrize(
    ("selector", "labels", "expected"),
    [
        ({"matchLabels": {"app": "checkout"}}, {"app": "checkout", "tier": "web"}, True),
        ({"matchLabels": {"app": "checkout"}}, {"app": "cart"}, False),
        (
            {"matchExpressions": [{"key": "tier", "operator": "In", "values": ["web", "api"]}]},
            {"tier": "api"},
            True,
        ),
        ({"matchExpressions": [{"key": "tier", "operator": "In", "values": ["web"]}]}, {}, False),
        ({"matchExpressions": [{"key": "tier", "operator": "NotIn", "values": ["web"]}]}, {}, True),
        (
            {"matchExpressions": [{"key": "tier", "operator": "NotIn", "values": ["web"]}]},
            {"tier": "web"},
            False,
        ),
        ({"matchExpressions": [{"key": "canary", "operator": "Exists"}]}, {"canary": ""}, True),
        ({"matchExpressions": [{"key": "canary", "operator": "DoesNotExist"}]}, {"canary": "1"}, False),
    ],
)
def test_selectors_match_as_the_api_server_does(selector: dict, labels: dict, expected: bool) -> None:  # type: ignore[type-arg]
    assert matches(selector, labels) is expected


def test_an_unknown_operator_is_an_error_not_a_silent_miss() -> None:
    with pytest.raises(SelectorError, match="Gt"):
        matches({"matchExpressions": [{"key": "a", "operator": "Gt", "values": ["1"]}]}, {"a": "2"})
