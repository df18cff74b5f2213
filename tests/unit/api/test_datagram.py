"""The report channel's wire format: sessions, signed report and answer datagrams, and what is refused."""

from __future__ import annotations

import base64
import contextlib

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from breakwater.api import datagram
from breakwater.api.datagram import (
    ANSWER,
    MAGIC,
    MAX_DATAGRAM_BYTES,
    RENEW,
    REPORT,
    DatagramError,
    ReportAnswer,
    Session,
    answer_datagram,
    open_answer,
    parse,
    parse_report,
    renew_datagram,
    report_datagram,
    session_key,
)
from breakwater.api.report import SidecarReport, TransitionReport, UpstreamReport

SECRET = b"operator secret derived from the serving key"
SESSION = Session("shop", "checkout-7d9f-abcde", "0b6f1c7e-uid", 1_900_000_000)
SESSION_ID = SESSION.encode()
KEY = session_key(SECRET, SESSION_ID)


def _body() -> bytes:
    report = SidecarReport(
        namespace="shop",
        pod="checkout-7d9f-abcde",
        pod_uid="0b6f1c7e-uid",
        config_hash="h1",
        seq=7,
        sent_at=1_800_000_000.5,
        upstreams=[UpstreamReport(name="payments", policy="shop/payments", state="Open", trips=1)],
        transitions=[
            TransitionReport(upstream="payments", from_state="Closed", to_state="Open", at=1_800_000_000.0)
        ],
    )
    return report.model_dump_json(by_alias=True).encode()


BODY = _body()


def _flip(data: bytes, index: int) -> bytes:
    return data[:index] + bytes([data[index] ^ 0x01]) + data[index + 1 :]


# -- round trips -------------------------------------------------------------------------------------


def test_a_report_round_trips_and_verifies_with_the_sessions_key() -> None:
    data = report_datagram(SESSION_ID, KEY, BODY)
    assert data.startswith(MAGIC + b" " + REPORT + b" ")
    received = parse_report(data)
    assert received.session_id == SESSION_ID
    assert received.body == BODY
    received.verify(KEY)  # does not raise
    assert Session.decode(received.session_id) == SESSION
    assert SidecarReport.model_validate_json(received.body).seq == 7


def test_an_answer_round_trips_and_opens_with_the_sessions_key() -> None:
    answer = ReportAnswer(seq=42, config_hash="abc123")
    kind, fields = parse(answer_datagram(KEY, answer))
    assert kind == ANSWER
    assert open_answer(KEY, fields) == answer


def test_an_unasked_answer_keeps_its_defaults() -> None:
    kind, fields = parse(answer_datagram(KEY, ReportAnswer(config_hash="h2")))
    assert kind == ANSWER
    assert open_answer(KEY, fields) == ReportAnswer(seq=-1, config_hash="h2")


def test_a_renew_datagram_parses_and_its_reason_is_capped() -> None:
    assert parse(renew_datagram("expired")) == (RENEW, [b"expired"])
    kind, [reason] = parse(renew_datagram("x" * 1000))
    assert kind == RENEW
    assert reason == b"x" * 200


def test_a_report_body_containing_spaces_stays_whole() -> None:
    body = b'{"namespace": "shop", "pod": "a b c"}'
    received = parse_report(report_datagram(SESSION_ID, KEY, body))
    assert received.body == body
    received.verify(KEY)


def test_a_datagram_of_exactly_the_maximum_size_is_accepted() -> None:
    head = report_datagram(SESSION_ID, KEY, b"")
    body = b"x" * (MAX_DATAGRAM_BYTES - len(head))
    data = report_datagram(SESSION_ID, KEY, body)
    assert len(data) == MAX_DATAGRAM_BYTES
    parse_report(data).verify(KEY)


# -- sessions and keys -------------------------------------------------------------------------------


def test_a_session_round_trips_through_its_id() -> None:
    assert Session.decode(SESSION.encode()) == SESSION
    no_uid = Session("ns", "pod", "", 0)
    assert Session.decode(no_uid.encode()) == no_uid
    assert "=" not in SESSION_ID  # padding is stripped: the id is one header field
    assert " " not in SESSION_ID


def test_two_sessions_for_the_same_pod_and_token_are_different_sessions() -> None:
    # A restarted sidecar asks again with the same token and counts its sequence numbers from 0:
    # the operator must see a new session, not a replay of the old one.
    first, second = (Session("shop", "checkout-1", "uid-1", 1_900_000_000) for _ in range(2))
    assert first.encode() != second.encode()
    assert session_key(SECRET, first.encode()) != session_key(SECRET, second.encode())


@given(
    namespace=st.from_regex(r"[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?", fullmatch=True),
    pod=st.from_regex(r"[a-z0-9]([-.a-z0-9]{0,100}[a-z0-9])?", fullmatch=True),
    uid=st.uuids().map(str) | st.just(""),
    expires=st.integers(min_value=0, max_value=2**40),
)
def test_any_kubernetes_name_round_trips_through_a_session_id(
    namespace: str, pod: str, uid: str, expires: int
) -> None:
    session = Session(namespace, pod, uid, expires)
    assert Session.decode(session.encode()) == session


def test_the_key_differs_per_session_and_per_secret() -> None:
    other_session = Session("shop", "checkout-7d9f-abcde", "0b6f1c7e-uid", 1_900_000_001).encode()
    other_pod = Session("shop", "checkout-7d9f-zzzzz", "0b6f1c7e-uid", 1_900_000_000).encode()
    keys = {
        KEY,
        session_key(SECRET, other_session),
        session_key(SECRET, other_pod),
        session_key(b"another operator secret", SESSION_ID),
    }
    assert len(keys) == 4
    assert session_key(SECRET, SESSION_ID) == KEY  # deterministic: the operator keeps no state


def _b64(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


@pytest.mark.parametrize(
    "text",
    [
        pytest.param("!!!not base64!!!", id="bad-base64-characters"),
        pytest.param("A", id="bad-base64-length"),
        pytest.param("", id="empty"),
        pytest.param(_b64(b"shop/pod/uid/123"), id="four-fields"),
        pytest.param(_b64(b"shop/pod/uid/123/nonce/extra"), id="six-fields"),
        pytest.param(_b64(b"shop/pod/uid/tomorrow/nonce"), id="non-int-expiry"),
        pytest.param(_b64(b"shop/pod/uid/1.5/nonce"), id="float-expiry"),
        pytest.param(_b64(b"shop/pod/uid//nonce"), id="empty-expiry"),
        pytest.param(_b64(b"shop/p\xffd/uid/123"), id="not-utf8"),
        pytest.param("c2hvcC9wb2QvdWlkLzEyMw\u00e9", id="non-ascii-text"),
    ],
)
def test_a_malformed_session_id_is_a_datagram_error(text: str) -> None:
    with pytest.raises(DatagramError, match="malformed session id"):
        Session.decode(text)


# -- rejections --------------------------------------------------------------------------------------


def test_a_report_signed_with_another_key_does_not_verify() -> None:
    other = session_key(SECRET, Session("shop", "other-pod", "", 1_900_000_000).encode())
    received = parse_report(report_datagram(SESSION_ID, other, BODY))
    with pytest.raises(DatagramError, match="bad signature"):
        received.verify(KEY)
    forged = parse_report(report_datagram(SESSION_ID, session_key(b"guessed secret", SESSION_ID), BODY))
    with pytest.raises(DatagramError, match="bad signature"):
        forged.verify(KEY)


def test_a_report_signed_as_an_answer_does_not_verify() -> None:
    """The kind is under the tag: an answer's signature cannot be replayed as a report's."""
    answer_tag = datagram._tag(KEY, ANSWER, BODY)
    data = b" ".join((MAGIC, REPORT, SESSION_ID.encode(), answer_tag, BODY))
    with pytest.raises(DatagramError, match="bad signature"):
        parse_report(data).verify(KEY)


def test_a_flipped_byte_anywhere_in_a_reports_body_or_tag_is_refused() -> None:
    data = report_datagram(SESSION_ID, KEY, BODY)
    tag_start = len(MAGIC) + len(REPORT) + len(SESSION_ID) + 3
    tag_len = datagram.TAG_BYTES * 2
    assert data[tag_start + tag_len : tag_start + tag_len + 1] == b" "
    for index in range(tag_start, len(data)):
        flipped = _flip(data, index)
        with pytest.raises(DatagramError):
            parse_report(flipped).verify(KEY)


def _open(data: bytes) -> ReportAnswer:
    kind, fields = parse(data)
    assert kind == ANSWER
    return open_answer(KEY, fields)


def test_a_flipped_byte_in_an_answers_body_or_tag_is_refused() -> None:
    data = answer_datagram(KEY, ReportAnswer(seq=3, config_hash="h2"))
    start = len(MAGIC) + len(ANSWER) + 2
    for index in range(start, len(data)):
        with pytest.raises(DatagramError):
            _open(_flip(data, index))


def test_an_answer_signed_with_another_key_is_refused() -> None:
    _, fields = parse(answer_datagram(b"k" * 32, ReportAnswer(seq=1, config_hash="evil")))
    with pytest.raises(DatagramError, match="bad signature on an answer"):
        open_answer(KEY, fields)


@pytest.mark.parametrize("body", [b"not json", b'{"seq": "three"}', b"[]"])
def test_a_signed_answer_whose_body_is_not_an_answer_is_a_datagram_error(body: bytes) -> None:
    data = b" ".join((MAGIC, ANSWER, datagram._tag(KEY, ANSWER, body), body))
    _, fields = parse(data)
    with pytest.raises(DatagramError):
        open_answer(KEY, fields)


def test_a_flipped_byte_in_the_session_id_makes_it_another_session() -> None:
    """The session id is not under the tag, but the key is derived from it: a changed id needs
    another key, which only the operator's secret gives."""
    data = report_datagram(SESSION_ID, KEY, BODY)
    start = len(MAGIC) + len(REPORT) + 2
    for index in range(start, start + len(SESSION_ID)):
        flipped = _flip(data, index)
        try:
            received = parse_report(flipped)
        except DatagramError:
            continue
        assert received.session_id != SESSION_ID
        with pytest.raises(DatagramError):
            received.verify(session_key(SECRET, received.session_id))


@pytest.mark.parametrize("cut", [0, 1, 3, 4, 5, 6, 20])
def test_a_truncated_report_is_refused(cut: int) -> None:
    data = report_datagram(SESSION_ID, KEY, BODY)
    with pytest.raises(DatagramError):
        parse_report(data[:cut])


def test_a_report_cut_inside_its_body_parses_but_does_not_verify() -> None:
    data = report_datagram(SESSION_ID, KEY, BODY)
    with pytest.raises(DatagramError, match="bad signature"):
        parse_report(data[:-1]).verify(KEY)


@pytest.mark.parametrize(
    "data",
    [
        pytest.param(b"bw1 R", id="kind-only"),
        pytest.param(b"bw1 R " + SESSION_ID.encode(), id="session-only"),
        pytest.param(b"bw1 R " + SESSION_ID.encode() + b" abcdef", id="no-body"),
        pytest.param(b"bw1 A", id="answer-kind-only"),
        pytest.param(b"bw1 A deadbeef", id="answer-no-body"),
        pytest.param(b"bw1", id="magic-only"),
    ],
)
def test_a_datagram_missing_fields_is_refused(data: bytes) -> None:
    with pytest.raises(DatagramError, match=r"truncated|not a breakwater"):
        parse(data)


@pytest.mark.parametrize(
    "data",
    [
        pytest.param(b"bw2 R s t {}", id="other-version"),
        pytest.param(b"BW1 R s t {}", id="upper-case"),
        pytest.param(b"GET / HTTP/1.1\r\n\r\n", id="http"),
        pytest.param(b"\x00\x01\x02", id="binary"),
        pytest.param(b"", id="empty"),
    ],
)
def test_a_datagram_with_another_magic_is_refused(data: bytes) -> None:
    with pytest.raises(DatagramError, match="not a breakwater datagram"):
        parse(data)


def test_an_unknown_kind_is_refused() -> None:
    with pytest.raises(DatagramError, match="unknown datagram kind"):
        parse(b"bw1 X whatever")


def test_an_answer_or_renew_is_not_a_report() -> None:
    with pytest.raises(DatagramError, match="not a report"):
        parse_report(answer_datagram(KEY, ReportAnswer(seq=1)))
    with pytest.raises(DatagramError, match="not a report"):
        parse_report(renew_datagram("expired"))


def test_an_oversize_datagram_is_refused_before_anything_else() -> None:
    head = report_datagram(SESSION_ID, KEY, b"")
    data = report_datagram(SESSION_ID, KEY, b"x" * (MAX_DATAGRAM_BYTES - len(head) + 1))
    assert len(data) == MAX_DATAGRAM_BYTES + 1
    with pytest.raises(DatagramError, match="too large"):
        parse(data)
    with pytest.raises(DatagramError, match="too large"):
        parse_report(data)


def test_a_non_ascii_session_id_in_a_report_is_refused() -> None:
    data = b"bw1 R sess\xc3\xa9 " + b"0" * 32 + b" {}"
    with pytest.raises(DatagramError, match="malformed session id"):
        parse_report(data)


# -- nothing but DatagramError escapes ---------------------------------------------------------------

_fragments = st.sampled_from(
    [MAGIC, b" ", REPORT, ANSWER, RENEW, SESSION_ID.encode(), b"0" * 32, b"{}", b"\xff", b"="]
)
_datagrams = st.binary(max_size=64) | st.lists(_fragments | st.binary(max_size=8), max_size=8).map(b"".join)


@settings(max_examples=500)
@given(_datagrams)
def test_parsing_arbitrary_bytes_only_ever_raises_datagram_error(data: bytes) -> None:
    try:
        kind, fields = parse(data)
    except DatagramError:
        pass
    else:
        assert kind in (REPORT, ANSWER, RENEW)
        assert all(isinstance(f, bytes) for f in fields)
    try:
        received = parse_report(data)
    except DatagramError:
        return
    with contextlib.suppress(DatagramError):
        received.verify(KEY)
    with contextlib.suppress(DatagramError):
        Session.decode(received.session_id)


@settings(max_examples=500)
@given(st.text(max_size=80) | st.binary(max_size=60).map(_b64))
def test_decoding_an_arbitrary_session_id_only_ever_raises_datagram_error(text: str) -> None:
    try:
        session = Session.decode(text)
    except DatagramError:
        return
    assert isinstance(session.expires_at, int)


@settings(max_examples=200)
@given(st.binary(max_size=64))
def test_opening_an_arbitrary_answer_only_ever_raises_datagram_error(data: bytes) -> None:
    try:
        _, fields = parse(b"bw1 A " + data)
    except DatagramError:
        return
    with pytest.raises(DatagramError):
        open_answer(KEY, fields)


def test_a_session_authorization_proves_its_session_and_nothing_else() -> None:
    now = 1_800_000_000.0
    key = session_key(SECRET, SESSION_ID)
    header = datagram.session_authorization(SESSION_ID, key)
    assert datagram.check_session_authorization(SECRET, header, now=now) == SESSION
    other_id = Session("shop", "other-pod", "", 1_900_000_000).encode()
    forged = [
        datagram.session_authorization(SESSION_ID, b"k" * 32),  # a key the operator did not give
        datagram.session_authorization(other_id, key),  # another session, this session's key
        header.replace("Session ", "Bearer ", 1),
        "Session " + SESSION_ID,  # no proof
        "",
    ]
    for bad in forged:
        with pytest.raises(DatagramError):
            datagram.check_session_authorization(SECRET, bad, now=now)
    with pytest.raises(DatagramError, match="expired"):
        datagram.check_session_authorization(SECRET, header, now=SESSION.expires_at + 1.0)
