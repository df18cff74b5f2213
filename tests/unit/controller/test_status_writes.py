"""Which status changes are worth a write: states at once, figures only when they moved."""

from __future__ import annotations

from typing import Any

import pytest

from breakwater.controller.refresher import status_patch
from breakwater.controller.status import figures_moved, significant


def status(*, state: str = "Closed", rate: float | None = 0.1, trips: int = 2) -> dict[str, Any]:
    upstream: dict[str, Any] = {"name": "payments", "state": state, "open": 0, "closed": 3, "trips": trips}
    if rate is not None:
        upstream["failureRate"] = rate
    return {"upstreams": [upstream], "conditions": []}


def test_a_state_change_is_significant_and_figures_are_not() -> None:
    assert significant(status(state="Open")) != significant(status())
    assert significant(status(rate=0.5, trips=9)) == significant(status())


@pytest.mark.parametrize(
    ("wanted", "moved"),
    [
        (status(rate=0.12), False),  # a wobble of 2 points waits for the 60 s drift write
        (status(rate=0.149), False),
        (status(rate=0.15), True),  # 5 points
        (status(rate=0.02), True),
        (status(trips=3), True),  # a trip is news even when the rate holds
        (status(rate=None), True),  # the rate went away (no calls in the window)
    ],
)
def test_figures_moved_by_five_points_or_a_trip(wanted: dict[str, Any], moved: bool) -> None:
    assert figures_moved(wanted, status()) is moved


def test_a_rate_appearing_or_a_new_upstream_counts_as_moved() -> None:
    assert figures_moved(status(), status(rate=None))
    other = {"upstreams": [{"name": "ledger", "state": "Closed", "trips": 0}]}
    assert figures_moved(status(), other)


def test_the_status_patch_nulls_what_went_away_and_replaces_lists_whole() -> None:
    stored = {
        "summary": {"state": "Open", "message": "payments open on 1/1 pods"},
        "upstreams": [{"name": "a"}],
    }
    wanted = {"summary": {"state": "Closed"}, "upstreams": []}
    assert status_patch(wanted, stored) == {"summary": {"message": None, "state": "Closed"}, "upstreams": []}


def test_a_whole_key_that_went_away_is_nulled_and_keys_of_others_are_kept() -> None:
    """`override` is left out once the override is removed: kept, it would show for ever."""
    stored = {"override": {"active": True, "mode": "Disabled"}, "summary": {"state": "Closed"}, "other": 1}
    wanted = {"summary": {"state": "Closed"}}
    assert status_patch(wanted, stored) == {"override": None, "summary": {"state": "Closed"}}
