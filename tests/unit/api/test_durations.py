"""Durations and timestamps: parsed once, exactly, and written back as the user wrote them."""

from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta

import pytest
from hypothesis import given
from hypothesis import strategies as st
from pydantic import BaseModel, ValidationError

from breakwater.api import Duration, Timestamp
from breakwater.api.durations import (
    DURATION_PATTERN,
    MAX_DURATION_NS,
    format_duration,
    format_timestamp,
    parse_duration_ns,
    parse_timestamp,
)
from breakwater.api.rules import DURATION

MS = 1_000_000
S = 1000 * MS


@pytest.mark.parametrize(
    ("text", "seconds"),
    [
        ("250ms", 0.25),
        ("30s", 30),
        ("5m", 300),
        ("1h", 3600),
        ("1m30s", 90),
        ("1h30m", 5400),
        ("1.5s", 1.5),
        ("0.001s", 0.001),
        ("1s500ms", 1.5),
        ("720h", 720 * 3600),
        ("007s", 7),
    ],
)
def test_a_kubernetes_style_duration_parses_to_seconds(text: str, seconds: float) -> None:
    duration = Duration(text)
    assert duration == text
    assert duration.seconds == pytest.approx(seconds)
    assert duration.timedelta == timedelta(seconds=seconds)


@pytest.mark.parametrize(
    "text", ["", "30", "1d", "5 m", "-5s", "0s", "0ms", "721h", "1.2345s", "s", "1us", "1M", "PT5M", "1h 30m"]
)
def test_anything_else_is_refused_with_the_rule_message(text: str) -> None:
    with pytest.raises(ValueError, match=re.escape(DURATION.message)):
        Duration(text)


def test_a_duration_is_the_string_it_was_written_as() -> None:
    assert Duration("90s") == "90s"
    assert Duration("90s").seconds == Duration("1m30s").seconds
    assert repr(Duration("90s")) == "Duration('90s')"


class _Holder(BaseModel):
    d: Duration
    t: Timestamp | None = None


def test_in_a_model_a_duration_serialises_as_plain_text() -> None:
    holder = _Holder.model_validate({"d": "1m30s"})
    assert isinstance(holder.d, Duration)
    assert holder.d.seconds == 90
    dumped = holder.model_dump(mode="json")
    assert dumped == {"d": "1m30s", "t": None}
    assert type(dumped["d"]) is str
    assert type(holder.model_dump()["d"]) is str


def test_in_a_model_a_bad_duration_is_a_validation_error_with_the_message() -> None:
    with pytest.raises(ValidationError) as info:
        _Holder.model_validate({"d": "1d"})
    assert info.value.errors()[0]["msg"] == DURATION.message
    with pytest.raises(ValidationError):
        _Holder.model_validate({"d": 30})


@given(st.integers(min_value=1, max_value=MAX_DURATION_NS // MS))
def test_the_canonical_spelling_round_trips(milliseconds: int) -> None:
    text = format_duration(milliseconds * MS)
    assert re.fullmatch(DURATION_PATTERN, text)
    assert Duration(text).nanoseconds == milliseconds * MS
    assert Duration.from_seconds(milliseconds / 1000) == text


@given(
    st.lists(
        st.tuples(st.integers(0, 999), st.integers(0, 999), st.sampled_from(["h", "m", "s", "ms"])),
        min_size=1,
        max_size=3,  # at most 27 characters: within the 32 a duration may have
    )
)
def test_any_sum_of_terms_parses_to_the_exact_sum(terms: list[tuple[int, int, str]]) -> None:
    unit = {"h": 3600 * S, "m": 60 * S, "s": S, "ms": MS}
    text = "".join(f"{whole}.{frac:03d}{u}" for whole, frac, u in terms)
    expected = sum(whole * unit[u] + frac * unit[u] // 1000 for whole, frac, u in terms)
    assert parse_duration_ns(text) == expected


@given(st.text(alphabet="0123456789.hms -d", max_size=12))
def test_the_pattern_and_the_parser_agree(text: str) -> None:
    assert (parse_duration_ns(text) is not None) == bool(re.fullmatch(DURATION_PATTERN, text))


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("2030-01-01T12:00:00Z", datetime(2030, 1, 1, 12, tzinfo=UTC)),
        ("2030-01-01T14:00:00+02:00", datetime(2030, 1, 1, 12, tzinfo=UTC)),
        ("2030-01-01T12:00:00.5Z", datetime(2030, 1, 1, 12, 0, 0, 500_000, tzinfo=UTC)),
    ],
)
def test_rfc3339_timestamps_with_a_zone_parse(text: str, expected: datetime) -> None:
    assert parse_timestamp(text) == expected


@pytest.mark.parametrize(
    "text",
    [
        "2030-01-01T12:00:00",
        "2030-01-01",
        "2030-01-01 12:00:00Z",
        "2030-02-31T00:00:00Z",
        "1969-12-31T23:59:59Z",
    ],
)
def test_other_timestamps_are_refused(text: str) -> None:
    assert parse_timestamp(text) is None


@given(st.datetimes(min_value=datetime(1970, 1, 1), max_value=datetime(9999, 1, 1), timezones=st.just(UTC)))
def test_timestamps_round_trip_through_their_text(moment: datetime) -> None:
    text = format_timestamp(moment)
    assert text.endswith("Z")
    assert parse_timestamp(text) == moment
    assert _Holder.model_validate({"d": "1s", "t": text}).t == moment
