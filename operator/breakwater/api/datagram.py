"""The report channel's datagrams: signed UDP messages between a sidecar and the operator.

Why datagrams: a fleet of 10,000 sidecars each holding a TLS connection to the operator costs it
~35 KiB per connection (350 MB in all) and a TLS record + HTTP parse per report. A datagram costs the
operator nothing between reports, and one HMAC and one JSON parse per report.

Trust comes from a session: the sidecar proves who it is once over HTTPS (`POST /v1/session` with its
pod-bound service-account token, checked by TokenReview) and receives a session id and a key. The
session id names the pod and an expiry; the key is HMAC(operator secret, session id), so the operator
keeps no per-session state and can check any datagram on its own. A datagram for another pod, with a
forged or expired session, or a replayed sequence number, is dropped and counted.

Layout (ASCII header, space separated, then the JSON body):
    sidecar -> operator   b"bw1 R <session> <tag> <report JSON>"    tag = HMAC(key, b"R" + body)
    operator -> sidecar   b"bw1 A <tag> <answer JSON>"              tag = HMAC(key, b"A" + body)
    operator -> sidecar   b"bw1 K <reason>"                         unsigned: "get a new session"
    operator -> leader    b"bw1 F <the sidecar's report datagram>"  a report relayed as received
An answer carries the config hash the pod should run; the operator sends one for every report and,
unasked, to each affected sidecar when a policy changes. A sidecar that runs another hash fetches the
config over HTTPS (`GET /v1/config`). A `K` can only make a sidecar ask for a new session, which it
does at most once per `RENEW_MIN_SECONDS`, so forging one achieves nothing but a TokenReview.

With several operator replicas, a sidecar's datagrams reach whichever replica the Service picked; that
replica answers, and relays the report to the leader (the replica that writes status) inside an `F`.
The relay adds no signature of its own: the leader checks the sidecar's, as every replica shares the
operator secret, and the report's sequence number, so a relayed copy cannot be replayed either.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import json
import secrets
from dataclasses import dataclass, field
from typing import Any

from breakwater.api.plain import fields as f
from breakwater.api.problems import join_path
from breakwater.errors import InvalidInput

MAGIC = b"bw1"
SESSION_PATH = "/v1/session"
MAX_DATAGRAM_BYTES = 16 * 1024
TAG_BYTES = 16
RENEW_MIN_SECONDS = 5.0

REPORT = b"R"
ANSWER = b"A"
RENEW = b"K"
RELAY = b"F"
CONFIG = b"C"  # the tag of a session authorization (HTTPS), never a datagram kind
SESSION_SCHEME = "Session"


class DatagramError(InvalidInput):
    """Not a datagram of this channel, or one that does not verify."""


def _read(body: bytes | str, what: str, fields: tuple[f.Field, ...]) -> dict[str, Any]:
    """The fields of one JSON object of the channel, unknown ones ignored (a newer peer's additions)."""
    try:
        document = json.loads(body)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise DatagramError(f"malformed {what}: not JSON") from exc
    errors = f.Errors()
    try:
        values = f.read_fields(errors, (), document, fields, extra="ignore")
    except f.NeedsModels as exc:
        raise DatagramError(f"malformed {what}: {join_path(exc.args[0])} is not of its JSON type") from exc
    if values is None:
        raise DatagramError(f"malformed {what}: " + "; ".join(str(p) for p in errors.problems()))
    return values


def _str(**checks: Any) -> f.Reader:
    return lambda e, loc, v: f.string(e, loc, v, **checks)


def _fields(*specs: tuple[str, str, f.Reader, Any]) -> tuple[f.Field, ...]:
    return tuple(f.Field(*spec) for spec in specs)


def _json(values: dict[str, Any]) -> str:
    return json.dumps(values, separators=(",", ":"), ensure_ascii=False)


@dataclass(frozen=True, slots=True)
class SessionRequest:
    """A sidecar asks for a session (``POST /v1/session``, its token in the header)."""

    namespace: str
    pod: str
    pod_uid: str = ""

    def to_json(self) -> str:
        return _json({"namespace": self.namespace, "pod": self.pod, "podUid": self.pod_uid})

    @classmethod
    def from_json(cls, body: bytes | str) -> SessionRequest:
        return cls(**_read(body, "session request", _SESSION_REQUEST))


_SESSION_REQUEST = _fields(
    ("namespace", "namespace", _str(min_length=1, max_length=63), f.MISSING),
    ("pod", "pod", _str(min_length=1, max_length=253), f.MISSING),
    ("pod_uid", "podUid", _str(max_length=64), ""),
)


@dataclass(frozen=True, slots=True)
class SessionGrant:
    """The operator's answer to a session request: where to send datagrams and how to sign them."""

    session: str
    key: str  # base64 of the HMAC key; it travels only inside the TLS answer
    expires_at: float  # wall-clock seconds
    port: int  # the operator's UDP port (its host is the report URL's)

    def to_json(self) -> str:
        return _json(
            {"session": self.session, "key": self.key, "expiresAt": self.expires_at, "port": self.port}
        )

    @classmethod
    def from_json(cls, body: bytes | str) -> SessionGrant:
        return cls(**_read(body, "session grant", _SESSION_GRANT))


_SESSION_GRANT = _fields(
    ("session", "session", _str(), f.MISSING),
    ("key", "key", _str(), f.MISSING),
    ("expires_at", "expiresAt", f.number, f.MISSING),
    ("port", "port", f.integer, f.MISSING),
)


@dataclass(frozen=True, slots=True)
class ReportAnswer:
    seq: int = -1  # the report answered; -1 when the operator writes unasked (a policy changed)
    config_hash: str = ""  # what the pod should run; "" when the operator has no opinion (no policy)

    def to_json(self) -> str:
        return _json({"seq": self.seq, "configHash": self.config_hash})

    @classmethod
    def from_json(cls, body: bytes | str) -> ReportAnswer:
        return cls(**_read(body, "answer", _ANSWER))


_ANSWER = _fields(("seq", "seq", f.integer, -1), ("config_hash", "configHash", _str(), ""))


@dataclass(frozen=True)
class Session:
    """Who a session belongs to and until when. Encoded in the session id itself.

    The nonce makes every session new, even one asked for again with the same token (a restarted
    sidecar counts its sequence numbers from 0 again: the operator must not take them for replays).
    """

    namespace: str
    pod: str
    uid: str
    expires_at: int
    nonce: str = field(default_factory=lambda: secrets.token_hex(8))

    def encode(self) -> str:
        raw = f"{self.namespace}/{self.pod}/{self.uid}/{self.expires_at}/{self.nonce}".encode()
        return base64.urlsafe_b64encode(raw).decode().rstrip("=")

    @classmethod
    def decode(cls, text: str) -> Session:
        try:
            raw = base64.urlsafe_b64decode(text + "=" * (-len(text) % 4)).decode()
            namespace, pod, uid, expires, nonce = raw.split("/")
            return cls(namespace, pod, uid, int(expires), nonce)
        except (ValueError, binascii.Error, UnicodeDecodeError) as exc:
            raise DatagramError("malformed session id") from exc


def session_key(secret: bytes, session_id: str) -> bytes:
    return hmac.digest(secret, b"breakwater session " + session_id.encode(), hashlib.sha256)


def _tag(key: bytes, kind: bytes, body: bytes) -> bytes:
    return hmac.digest(key, kind + body, hashlib.sha256)[:TAG_BYTES].hex().encode()


def session_authorization(session_id: str, key: bytes) -> str:
    """An `Authorization` header value for the operator's HTTPS endpoints (`GET /v1/config`): the
    session id and a proof of its key. It travels only inside TLS, like the token it stands for, and
    saves the API server a TokenReview per config fetch (an edit can make a thousand sidecars fetch)."""
    return f"{SESSION_SCHEME} {session_id} {_tag(key, CONFIG, session_id.encode()).decode()}"


def check_session_authorization(secret: bytes, header: str, *, now: float) -> Session:
    """The session a `session_authorization` header proves, or DatagramError."""
    scheme, _, rest = header.partition(" ")
    session_id, _, proof = rest.partition(" ")
    if scheme != SESSION_SCHEME or not session_id or not proof:
        raise DatagramError("not a session authorization")
    session = Session.decode(session_id)
    if session.expires_at < now:
        raise DatagramError("the session expired")
    expected = _tag(session_key(secret, session_id), CONFIG, session_id.encode())
    if not hmac.compare_digest(proof.encode(), expected):
        raise DatagramError("bad session proof")
    return session


def report_datagram(session_id: str, key: bytes, body: bytes) -> bytes:
    return b" ".join((MAGIC, REPORT, session_id.encode(), _tag(key, REPORT, body), body))


def answer_datagram(key: bytes, answer: ReportAnswer) -> bytes:
    body = answer.to_json().encode()
    return b" ".join((MAGIC, ANSWER, _tag(key, ANSWER, body), body))


def renew_datagram(reason: str) -> bytes:
    return b" ".join((MAGIC, RENEW, reason.encode()[:200]))


def relay_datagram(report: bytes) -> bytes:
    return b" ".join((MAGIC, RELAY, report))


def unwrap_relay(data: bytes) -> bytes | None:
    """The report datagram a relay carries, or None when `data` is not a relay."""
    prefix = MAGIC + b" " + RELAY + b" "
    return data[len(prefix) :] if data.startswith(prefix) else None


@dataclass(frozen=True)
class ReportDatagram:
    session_id: str
    tag: bytes
    body: bytes

    def verify(self, key: bytes) -> None:
        if not hmac.compare_digest(self.tag, _tag(key, REPORT, self.body)):
            raise DatagramError("bad signature")


def parse(data: bytes) -> tuple[bytes, list[bytes]]:
    """The kind and the remaining fields of a datagram (body last, unsplit)."""
    if len(data) > MAX_DATAGRAM_BYTES:
        raise DatagramError("datagram too large")
    head = data.split(b" ", 2)
    if len(head) < 2 or head[0] != MAGIC:
        raise DatagramError("not a breakwater datagram")
    kind = head[1]
    rest = head[2] if len(head) > 2 else b""
    if kind == REPORT:
        fields = rest.split(b" ", 2)
        if len(fields) != 3:
            raise DatagramError("truncated report")
        return kind, fields
    if kind == ANSWER:
        fields = rest.split(b" ", 1)
        if len(fields) != 2:
            raise DatagramError("truncated answer")
        return kind, fields
    if kind == RENEW:
        return kind, [rest]
    raise DatagramError(f"unknown datagram kind {kind!r}")


def parse_report(data: bytes) -> ReportDatagram:
    kind, fields = parse(data)
    if kind != REPORT:
        raise DatagramError("not a report")
    try:
        session_id = fields[0].decode("ascii")
    except UnicodeDecodeError as exc:
        raise DatagramError("malformed session id") from exc
    return ReportDatagram(session_id, fields[1], fields[2])


def open_answer(key: bytes, fields: list[bytes]) -> ReportAnswer:
    tag, body = fields
    if not hmac.compare_digest(tag, _tag(key, ANSWER, body)):
        raise DatagramError("bad signature on an answer")
    return ReportAnswer.from_json(body)
