"""The fast path renders the answer without a fallback (a rejection while the breaker is open) from
parts made once: the bytes must be those of the answer the full path and the fallbacks are built from."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from breakwater.proxy.answers import marked_error
from breakwater.proxy.fast.wire import MarkedErrors, render_answer

RENDER = MarkedErrors()


@given(
    name=st.sampled_from(["bench", "payments.v2", "a-b_c"]),
    reason=st.sampled_from(["open", "bulkhead-full", "timeout", "connect-error", "reset", "bad-response"]),
    status=st.sampled_from([502, 503, 504]),
    retry_after=st.none() | st.floats(allow_nan=True) | st.floats(0, 400),
    head_only=st.booleans(),
    close=st.booleans(),
)
def test_the_prepared_bytes_are_the_rendered_answer(
    name: str, reason: str, status: int, retry_after: float | None, head_only: bool, close: bool
) -> None:
    expected = render_answer(
        marked_error(name, reason, status, retry_after), head_only=head_only, close=close
    )
    assert RENDER.render(name, reason, status, retry_after, head_only=head_only, close=close) == expected


@pytest.mark.parametrize(
    ("retry_after", "header", "figure"),
    [
        (0.0004, b"1", b"0.0"),
        (29.9996, b"30", b"30.0"),
        (12.3456, b"13", b"12.346"),
        (float("inf"), b"60", b"null"),
    ],
)
def test_retry_after_is_whole_seconds_rounded_up_and_the_body_keeps_milliseconds(
    retry_after: float, header: bytes, figure: bytes
) -> None:
    raw = RENDER.render("bench", "open", 503, retry_after, head_only=False, close=False)
    head, _, body = raw.partition(b"\r\n\r\n")
    assert b"\r\nRetry-After: " + header + b"\r\n" in head
    assert body == b'{"error":"upstream circuit open","upstream":"bench","retryAfterSeconds":' + figure + b"}"


@given(first=st.floats(0, 5), nudge=st.floats(-0.002, 0.002), head_only=st.booleans())
def test_the_answer_kept_from_the_last_rejection_is_reused_only_when_its_bytes_are_the_same(
    first: float, nudge: float, head_only: bool
) -> None:
    """Two rejections within a millisecond share their figure but may straddle a whole second."""
    render = MarkedErrors()
    for retry_after in (first, first + nudge, 1.9996, 2.0004):
        expected = render_answer(marked_error("bench", "open", 503, retry_after), head_only=head_only)
        assert render.render("bench", "open", 503, retry_after, head_only=head_only, close=False) == expected
