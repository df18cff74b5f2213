"""The sidecar's half of the report channel, against an operator stand-in on 127.0.0.1.

The stand-in is the operator's wire protocol and nothing more: `POST /v1/session` grants sessions with
keys it chooses, `GET /v1/config` returns the config it was told to, and a UDP socket verifies the
report datagrams with the session keys and sends answers and renews back to their sender. The sidecar
is a real `Sidecar` with a real upstream; its breaker trips because real calls through it fail.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import itertools
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web

from breakwater.api import datagram
from breakwater.api.plain import sidecar as plain
from breakwater.api.report import ConfigReply, SidecarReport, TransitionReport
from breakwater.api.sidecar import SidecarConfig
from breakwater.proxy.reporter import (
    MAX_TRANSITIONS_PER_REPORT,
    RENEW_BEFORE_SECONDS,
    Reporter,
    SidecarPod,
)
from breakwater.proxy.sidecar import Sidecar
from tests.unit.proxy.helpers import LOOPBACK, FaultyUpstream, SidecarFactory, sidecar_doc, upstream_doc

pytestmark = pytest.mark.timeout(60)

TRIP = {"consecutiveFailures": 2, "openSeconds": 30, "jitter": 0}
POD = SidecarPod(namespace="shop", pod="checkout-1", uid="uid-1")


@dataclass
class Grant:
    session_id: str
    key: bytes
    authorization: str
    request: datagram.SessionRequest


@dataclass
class Received:
    session_id: str
    report: SidecarReport
    at: float  # loop time of arrival
    addr: tuple[str, int]


@dataclass
class ConfigRequest:
    query: dict[str, str]
    authorization: str


@dataclass
class OperatorStandIn(asyncio.DatagramProtocol):
    """The operator's report channel as the sidecar sees it: plain HTTP sessions and config, UDP reports."""

    session_seconds: float = 3600.0
    config_reply: ConfigReply | None = None
    grants: list[Grant] = field(default_factory=list)
    reports: list[Received] = field(default_factory=list)
    unverified: list[bytes] = field(default_factory=list)  # datagrams that did not verify: must stay empty
    config_requests: list[ConfigRequest] = field(default_factory=list)
    port: int = 0
    udp_port: int = 0
    _runner: web.AppRunner | None = None
    _transport: asyncio.DatagramTransport | None = None

    @property
    def url(self) -> str:
        return f"http://{LOOPBACK}:{self.port}"

    async def start(self) -> None:
        loop = asyncio.get_running_loop()
        transport, _ = await loop.create_datagram_endpoint(lambda: self, local_addr=(LOOPBACK, 0))
        self._transport = transport
        self.udp_port = transport.get_extra_info("sockname")[1]
        app = web.Application()
        app.router.add_post(datagram.SESSION_PATH, self.handle_session)
        app.router.add_get("/v1/config", self.handle_config)
        self._runner = web.AppRunner(app, access_log=None, shutdown_timeout=0.5)
        await self._runner.setup()
        site = web.TCPSite(self._runner, LOOPBACK, 0)
        await site.start()
        self.port = self._runner.addresses[0][1]

    async def stop(self) -> None:
        if self._transport is not None:
            self._transport.close()
        if self._runner is not None:
            await self._runner.cleanup()

    # -- HTTP ----------------------------------------------------------------------------------------

    async def handle_session(self, request: web.Request) -> web.Response:
        ask = datagram.SessionRequest.from_json(await request.read())
        n = len(self.grants)
        expires = int(time.time() + self.session_seconds)
        session_id = datagram.Session(ask.namespace, ask.pod, f"{ask.pod_uid}#{n}", expires).encode()
        key = hashlib.sha256(f"stand-in key {n}".encode()).digest()
        self.grants.append(Grant(session_id, key, request.headers.get("Authorization", ""), ask))
        grant = datagram.SessionGrant(
            session=session_id,
            key=base64.b64encode(key).decode(),
            expires_at=time.time() + self.session_seconds,
            port=self.udp_port,
        )
        return web.Response(text=grant.to_json(), content_type="application/json")

    async def handle_config(self, request: web.Request) -> web.Response:
        self.config_requests.append(
            ConfigRequest(dict(request.query), request.headers.get("Authorization", ""))
        )
        assert self.config_reply is not None, "the test did not say which config to serve"
        return web.Response(
            text=self.config_reply.model_dump_json(by_alias=True, exclude_none=True),
            content_type="application/json",
        )

    # -- UDP -----------------------------------------------------------------------------------------

    def datagram_received(self, data: bytes, addr: tuple[str, int]) -> None:
        keys = {g.session_id: g.key for g in self.grants}
        try:
            received = datagram.parse_report(data)
            received.verify(keys[received.session_id])
        except (KeyError, datagram.DatagramError):
            self.unverified.append(data)
            return
        report = SidecarReport.model_validate_json(received.body)
        self.reports.append(Received(received.session_id, report, asyncio.get_running_loop().time(), addr))

    def key_of(self, session_id: str) -> bytes:
        return next(g.key for g in self.grants if g.session_id == session_id)

    def answer(self, seq: int, config_hash: str, *, key: bytes | None = None) -> None:
        last = self.reports[-1]
        signing = key if key is not None else self.key_of(last.session_id)
        answer = datagram.ReportAnswer(seq=seq, config_hash=config_hash)
        assert self._transport is not None
        self._transport.sendto(datagram.answer_datagram(signing, answer), last.addr)

    def renew(self, reason: str = "bad-signature") -> None:
        assert self._transport is not None
        self._transport.sendto(datagram.renew_datagram(reason), self.reports[-1].addr)


# -- fixtures and helpers ----------------------------------------------------------------------------


@pytest.fixture
async def operator() -> AsyncIterator[OperatorStandIn]:
    stand_in = OperatorStandIn()
    await stand_in.start()
    try:
        yield stand_in
    finally:
        await stand_in.stop()
        assert stand_in.unverified == [], "the sidecar sent datagrams that do not verify"


@pytest.fixture
def token_file(tmp_path: Path) -> Path:
    path = tmp_path / "token"
    path.write_text("token-1\n")
    return path


@dataclass
class Harness:
    sidecar: Sidecar
    reporter: Reporter
    operator: OperatorStandIn
    applied: list[plain.PlainSidecarConfig]

    @property
    def base(self) -> str:
        return self.base_of("up")

    def base_of(self, upstream: str) -> str:
        return f"http://{LOOPBACK}:{self.sidecar.listen_port(upstream)}"


StartReporter = Callable[..., Awaitable[Harness]]


@pytest.fixture
async def start_reporter(
    start_sidecar: SidecarFactory,
    upstream: FaultyUpstream,
    operator: OperatorStandIn,
    token_file: Path,
) -> AsyncIterator[StartReporter]:
    reporters: list[Reporter] = []

    async def start(*, interval: float, upstreams: int = 0) -> Harness:
        """A sidecar with the upstream "up" (or `upstreams` upstreams "up0".."upN") and its reporter."""
        docs = [upstream_doc("up", upstream.port, breaker=TRIP)]
        if upstreams:
            docs = [upstream_doc(f"up{i}", upstream.port, breaker=TRIP) for i in range(upstreams)]
        sidecar = await start_sidecar(sidecar_doc(*docs, configHash="h1"))
        applied: list[plain.PlainSidecarConfig] = []

        async def on_config(config: plain.PlainSidecarConfig) -> None:
            applied.append(config)
            await sidecar.apply_config(config, source="operator")

        reporter = Reporter(
            sidecar=sidecar,
            url=operator.url,
            identity=POD,
            token_file=token_file,
            on_config=on_config,
            interval=interval,
        )
        await reporter.start()
        reporters.append(reporter)
        return Harness(sidecar, reporter, operator, applied)

    try:
        yield start
    finally:
        for reporter in reporters:
            await reporter.stop()


async def until(check: Callable[[], Any], *, within: float = 5.0, what: str = "condition") -> Any:
    """Poll `check` every 10 ms until it returns something truthy (and return that)."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + within
    while True:
        result = check()
        if result:
            return result
        if loop.time() > deadline:
            raise AssertionError(f"{what} not met within {within}s")
        await asyncio.sleep(0.01)


async def next_report(operator: OperatorStandIn, after: int, *, within: float = 5.0) -> Received:
    """The first report received after the first `after` ones."""
    await until(lambda: len(operator.reports) > after, within=within, what=f"report #{after + 1}")
    return operator.reports[after]


async def trip(base: str) -> None:
    async with aiohttp.ClientSession(trust_env=False) as client:
        for _ in range(2):
            async with client.get(f"{base}/status/502") as resp:
                await resp.read()


def write_token(path: Path, token: str) -> None:
    """What the kubelet does when it rotates a projected token: replace the file's content."""
    path.write_text(token + "\n")


def remove_token(path: Path) -> None:
    path.unlink()


def transition_key(t: TransitionReport) -> tuple[str, str, str, str, float]:
    return (t.upstream, t.from_state, t.to_state, t.reason, t.at)


# -- tests -------------------------------------------------------------------------------------------


async def test_reports_are_signed_with_the_session_and_a_summary_arrives_every_interval(
    start_reporter: StartReporter, operator: OperatorStandIn
) -> None:
    h = await start_reporter(interval=0.3)
    await next_report(operator, 3)
    [grant] = operator.grants
    assert grant.authorization == "Bearer token-1"
    assert (grant.request.namespace, grant.request.pod, grant.request.pod_uid) == (
        "shop",
        "checkout-1",
        "uid-1",
    )
    reports = operator.reports[:4]
    assert {r.session_id for r in reports} == {grant.session_id}  # each verified with the grant's key
    assert [r.report.seq for r in reports] == [0, 1, 2, 3]
    for r in reports:
        assert (r.report.namespace, r.report.pod, r.report.pod_uid) == ("shop", "checkout-1", "uid-1")
        assert r.report.config_hash == "h1"
        assert [(u.name, u.policy, u.state) for u in r.report.upstreams] == [("up", "shop/up", "Closed")]
        assert r.report.transitions == []
    gaps = [b.at - a.at for a, b in itertools.pairwise(reports)]
    assert all(0.25 <= gap <= 0.9 for gap in gaps), gaps
    assert h.reporter.sent >= 4


async def test_a_transition_is_reported_at_once_and_resent_until_its_report_is_answered(
    start_reporter: StartReporter, operator: OperatorStandIn
) -> None:
    loop = asyncio.get_running_loop()
    h = await start_reporter(interval=2.0)  # longer than any resend delay: a second report is a resend
    await next_report(operator, 0)
    await trip(h.base)
    tripped_at = loop.time()

    first = await next_report(operator, 1)
    assert first.at - tripped_at < 0.5  # at once (batched over 20 ms), not after the 2 s interval
    [transition] = first.report.transitions
    assert (transition.upstream, transition.policy) == ("up", "shop/up")
    assert (transition.from_state, transition.to_state, transition.reason) == (
        "Closed",
        "Open",
        "ConsecutiveFailures",
    )
    assert [u.state for u in first.report.upstreams] == ["Open"]

    # Not answered: the same transition goes out again after 0.5-1.5 s (1 s ± 50 %).
    resent = await next_report(operator, 2, within=3.0)
    assert 0.45 <= resent.at - first.at <= 1.5 + 0.3, resent.at - first.at
    assert resent.report.seq > first.report.seq
    assert [transition_key(t) for t in resent.report.transitions] == [transition_key(transition)]

    # Answered: the next report (the summary, an interval later) no longer carries it.
    operator.answer(resent.report.seq, "h1")
    await until(lambda: h.reporter.answered == 1, within=2.0, what="the answer processed")
    summary = await next_report(operator, 3, within=4.0)
    assert summary.report.transitions == []
    assert summary.at - resent.at >= 1.9  # nothing was resent in between
    assert [u.state for u in summary.report.upstreams] == ["Open"]


async def test_an_answer_with_another_config_hash_makes_the_sidecar_fetch_and_apply_that_config(
    start_reporter: StartReporter, operator: OperatorStandIn, token_file: Path
) -> None:
    h = await start_reporter(interval=5.0)
    first = await next_report(operator, 0)
    wanted = h.sidecar.config.replace(config_hash="h2", generation=1)  # type: ignore[union-attr]
    operator.config_reply = ConfigReply(config_hash="h2", config=SidecarConfig(**wanted.to_dict()))

    operator.answer(first.report.seq, "h2")
    await until(lambda: h.applied, within=3.0, what="on_config called")
    [request] = operator.config_requests
    assert request.query == {"hash": "h1", "namespace": "shop", "pod": "checkout-1", "uid": "uid-1"}
    # The session proves the pod (no TokenReview for a fetch), signed with the session's key.
    [grant] = operator.grants
    assert request.authorization == datagram.session_authorization(grant.session_id, grant.key)
    assert h.applied == [wanted]
    assert h.sidecar.routes.config_hash == "h2"
    assert h.reporter.answered == 1


async def test_an_answer_with_the_running_config_hash_fetches_nothing(
    start_reporter: StartReporter, operator: OperatorStandIn
) -> None:
    h = await start_reporter(interval=5.0)
    first = await next_report(operator, 0)
    operator.answer(first.report.seq, "h1")
    operator.answer(-1, "")  # unasked and without opinion (no policy selects the pod)
    await until(lambda: h.reporter.answered == 1, within=2.0, what="the answer processed")
    await asyncio.sleep(0.2)  # a fetch would be a task started by the answer: give it time to show
    assert operator.config_requests == []
    assert h.applied == []
    assert h.reporter.failures == 0


async def test_answered_reports_log_nothing_and_a_recovery_after_lost_ones_logs_once(
    start_reporter: StartReporter, operator: OperatorStandIn, caplog: pytest.LogCaptureFixture
) -> None:
    """Every summary used to log "reach the operator again after 1 unanswered" (seen in the logs of
    real pods: one line per pod every 5 s)."""
    caplog.set_level(logging.INFO, logger="breakwater.proxy.reporter")
    h = await start_reporter(interval=0.2)
    for seq in range(3):
        report = await next_report(operator, seq)
        operator.answer(report.report.seq, "h1")
        await until(lambda seq=seq: h.reporter.answered == seq + 1, within=2.0, what="the answer")
    assert not [r for r in caplog.records if "again after" in r.getMessage()]
    await next_report(operator, 3)  # left unanswered
    report = await next_report(operator, 4)
    operator.answer(report.report.seq, "h1")
    await until(lambda: h.reporter.answered == 4, within=2.0, what="the answer after a lost one")
    [line] = [r.getMessage() for r in caplog.records if "again after" in r.getMessage()]
    assert line == "reports reach the operator again after 1 unanswered"


async def test_an_answer_signed_with_another_key_is_ignored(
    start_reporter: StartReporter, operator: OperatorStandIn
) -> None:
    h = await start_reporter(interval=5.0)
    first = await next_report(operator, 0)
    operator.answer(first.report.seq, "h-forged", key=b"not the session key".ljust(32, b"!"))
    operator.answer(first.report.seq, "h1")  # then a genuine one: datagrams on loopback keep their order
    await until(lambda: h.reporter.answered == 1, within=2.0, what="the genuine answer processed")
    await asyncio.sleep(0.2)
    assert h.reporter.answered == 1  # the forged answer was not counted
    assert operator.config_requests == []  # nor did it make the sidecar fetch "h-forged"
    assert h.applied == []


async def test_a_forged_answer_does_not_acknowledge_a_transition(
    start_reporter: StartReporter, operator: OperatorStandIn
) -> None:
    h = await start_reporter(interval=5.0)
    await next_report(operator, 0)
    await trip(h.base)
    carrying = await next_report(operator, 1)
    assert carrying.report.transitions
    operator.answer(carrying.report.seq, "h1", key=b"x" * 32)
    resent = await next_report(operator, 2, within=3.0)
    assert [transition_key(t) for t in resent.report.transitions] == [
        transition_key(t) for t in carrying.report.transitions
    ]
    assert h.reporter.answered == 0


async def test_a_renew_datagram_opens_a_new_session_with_the_current_token(
    start_reporter: StartReporter, operator: OperatorStandIn, token_file: Path
) -> None:
    await start_reporter(interval=0.3)
    await next_report(operator, 0)
    [first] = operator.grants
    assert first.authorization == "Bearer token-1"

    write_token(token_file, "token-2")  # the kubelet rotates the projected token
    operator.renew()
    await until(lambda: len(operator.grants) == 2, within=2.0, what="a second session")
    second = operator.grants[1]
    assert second.session_id != first.session_id
    assert second.authorization == "Bearer token-2"
    count = len(operator.reports)
    later = await next_report(operator, count, within=2.0)
    assert later.session_id == second.session_id  # verified with the new key by the stand-in

    # A second renew right away is ignored (at most one per RENEW_MIN_SECONDS): forging K is cheap.
    operator.renew()
    await next_report(operator, len(operator.reports) + 1, within=2.0)  # two more reports go out
    assert len(operator.grants) == 2
    assert {r.session_id for r in operator.reports[count:]} == {second.session_id}


async def test_the_session_is_renewed_before_it_expires_with_the_rotated_token(
    start_reporter: StartReporter, operator: OperatorStandIn, token_file: Path
) -> None:
    operator.session_seconds = RENEW_BEFORE_SECONDS + 0.6  # due for renewal 0.6 s after it is granted
    await start_reporter(interval=0.2)
    await next_report(operator, 0)
    write_token(token_file, "token-rotated")
    await until(lambda: len(operator.grants) >= 2, within=3.0, what="a renewed session")
    assert [g.authorization for g in operator.grants[:2]] == ["Bearer token-1", "Bearer token-rotated"]
    count = len(operator.reports)
    later = await next_report(operator, count, within=2.0)
    assert later.session_id in {g.session_id for g in operator.grants[1:]}


async def test_a_refused_session_is_retried_and_reports_start_once_it_is_granted(
    start_reporter: StartReporter, operator: OperatorStandIn, token_file: Path
) -> None:
    remove_token(token_file)  # the kubelet has not written the token yet
    h = await start_reporter(interval=0.3)
    await until(lambda: h.reporter.failures >= 1, within=2.0, what="a failed session attempt")
    assert operator.grants == []
    write_token(token_file, "token-late")
    first = await next_report(operator, 0, within=4.0)  # the first retry comes after a 1 s back-off
    assert [g.authorization for g in operator.grants] == ["Bearer token-late"]
    assert first.session_id == operator.grants[0].session_id


async def test_transitions_beyond_one_reports_worth_follow_as_soon_as_the_first_are_answered(
    start_reporter: StartReporter, operator: OperatorStandIn
) -> None:
    h = await start_reporter(interval=3.0, upstreams=MAX_TRANSITIONS_PER_REPORT + 1)
    await next_report(operator, 0)
    async with aiohttp.ClientSession(trust_env=False) as client:
        for i in range(MAX_TRANSITIONS_PER_REPORT + 1):  # a burst: every upstream trips
            for _ in range(2):
                async with client.get(f"{h.base_of(f'up{i}')}/status/502") as resp:
                    await resp.read()
    await asyncio.sleep(0.15)  # the burst's last report goes out 20 ms after its last transition
    full = operator.reports[-1]  # the report the sidecar sent last: the one whose answer counts
    assert len(full.report.transitions) == MAX_TRANSITIONS_PER_REPORT  # 16 of the 17 fit
    carried = {t.upstream for t in full.report.transitions}
    count = len(operator.reports)
    operator.answer(full.report.seq, "h1")  # well before the 0.5-1.5 s resend
    await until(lambda: h.reporter.answered == 1, within=1.0, what="the answer processed")
    rest = await next_report(operator, count, within=3.5)
    assert {t.upstream for t in rest.report.transitions}.isdisjoint(carried)
    assert len(rest.report.transitions) == 1
    assert rest.at - full.at < 0.5, "the last transition waited for the summary interval"
