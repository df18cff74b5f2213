"""The sidecar's half of the report channel: push breaker states, receive the pod's config.

A report goes out at once (batched over a few milliseconds) on every breaker transition, and as a
summary every `interval` seconds, as a UDP datagram signed with a session key (see
`breakwater.api.datagram`). The session comes from the operator over HTTPS, once per token lifetime,
authenticated by the pod's projected service-account token (re-read each time: the kubelet rotates
it). The operator answers every report, and writes unasked when a policy changes, with the config hash
the pod should run; a different hash makes the sidecar fetch that config over HTTPS at once, so
policy edits arrive in about a second instead of after the kubelet's ConfigMap refresh. Transitions
are sent again until a report that carries them is answered. The mounted ConfigMap keeps working
while the operator is away.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import logging
import random
import ssl
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from breakwater.api import datagram
from breakwater.api.plain.report import (
    CONFIG_PATH,
    PlainConfigReply,
    PlainSidecarReport,
    PlainTransitionReport,
    PlainUpstreamReport,
)
from breakwater.api.plain.sidecar import PlainSidecarConfig
from breakwater.errors import InvalidInput
from breakwater.proxy.https_client import HttpClientError, request
from breakwater.proxy.sidecar import Sidecar
from breakwater.proxy.stats import TransitionEvent, wall_time

log = logging.getLogger(__name__)

MAX_PENDING_TRANSITIONS = 256
MAX_TRANSITIONS_PER_REPORT = 16  # keeps a datagram well under one MTU's worth of fragments
BATCH_SECONDS = 0.02
RESEND_SECONDS = 1.0  # a report that carries transitions is sent again if not answered by then (± 50 %,
# so a fleet that tripped at once does not resend at once)
RENEW_BEFORE_SECONDS = 300.0
HTTP_TIMEOUT = 10.0


@dataclass(frozen=True)
class SidecarPod:
    namespace: str
    pod: str
    uid: str = ""


class _ReplyEndpoint(asyncio.DatagramProtocol):
    def __init__(self, on_datagram: Callable[[bytes], None]) -> None:
        self.on_datagram = on_datagram

    def datagram_received(self, data: bytes, addr: tuple[str, int]) -> None:
        self.on_datagram(data)

    def error_received(self, exc: Exception) -> None:  # ICMP unreachable: the operator is away
        log.debug("report channel: %s", exc)


@dataclass
class _Session:
    session_id: str
    key: bytes
    expires_at: float
    transport: asyncio.DatagramTransport


@dataclass
class Reporter:
    sidecar: Sidecar
    url: str
    identity: SidecarPod
    token_file: Path
    on_config: Callable[[PlainSidecarConfig], Awaitable[None]]
    ca_pem: str = ""
    interval: float = 5.0
    sent: int = 0
    answered: int = 0
    failures: int = 0  # reports sent since the last answer (or failed session requests in a row)
    _pending: list[PlainTransitionReport] = field(default_factory=list)  # not yet in an answered report
    _carried: int = 0  # how many of _pending the last report carried
    _carried_seq: int = -1
    _wake: asyncio.Event = field(default_factory=asyncio.Event)
    _tasks: list[asyncio.Task[None]] = field(default_factory=list)
    _ssl: ssl.SSLContext | None = None
    _session: _Session | None = None
    _renew: asyncio.Event = field(default_factory=asyncio.Event)
    _renew_asked_at: float = 0.0
    _fetching: asyncio.Task[None] | None = None

    def __post_init__(self) -> None:
        self.sidecar.transition_listeners.append(self._on_transition)

    def _on_transition(self, event: TransitionEvent) -> None:
        if len(self._pending) >= MAX_PENDING_TRANSITIONS:
            del self._pending[0]
            self._carried = max(0, self._carried - 1)
        self._pending.append(
            PlainTransitionReport(
                upstream=event.upstream,
                policy=event.policy,
                from_state=event.from_state,
                to_state=event.to_state,
                reason=event.reason[:64],
                at=event.wall_time,
            )
        )
        self._wake.set()

    async def start(self) -> None:
        # No connection is kept: a session lasts an hour, a config fetch happens once per policy edit.
        self._ssl = (
            ssl.create_default_context(cadata=self.ca_pem) if self.ca_pem else ssl.create_default_context()
        )
        self._tasks = [asyncio.create_task(self._report_loop(), name="breakwater-report")]
        log.info("reporting to %s every %.0f s and on each transition", self.url, self.interval)

    async def stop(self) -> None:
        for task in [*self._tasks, *([self._fetching] if self._fetching else [])]:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        if self._session is not None:
            self._session.transport.close()

    # -- what is sent ------------------------------------------------------------------------------

    def snapshot(self) -> PlainSidecarReport:
        upstreams = []
        for up in self.sidecar.routes.by_name.values():
            snap = up.breaker.snapshot()  # evaluates Open -> HalfOpen lazily: that transition is reported too
            upstreams.append(
                PlainUpstreamReport(
                    name=up.name,
                    policy=up.policy,
                    state=snap.state,
                    mode=snap.mode,
                    calls=snap.calls,
                    failures=snap.failures,
                    rejections=snap.rejections,
                    would_reject=snap.would_reject,
                    trips=snap.trips,
                    window_calls=snap.window_calls,
                    failure_rate=snap.window_failure_rate,
                    slow_rate=snap.window_slow_rate,
                    state_since=wall_time(snap.state_since, clock=self.sidecar.clock),
                    latency=list(up.stats.buckets),  # the duration histogram /metrics exports
                )
            )
        self._carried = min(len(self._pending), MAX_TRANSITIONS_PER_REPORT)
        self._carried_seq = self.sent
        return PlainSidecarReport(
            namespace=self.identity.namespace,
            pod=self.identity.pod,
            pod_uid=self.identity.uid,
            config_hash=self.sidecar.routes.config_hash,
            seq=self.sent,
            sent_at=time.time(),
            upstreams=upstreams,
            transitions=self._pending[: self._carried],
        )

    def _headers(self) -> dict[str, str]:
        token = self.token_file.read_text().strip()
        return {"Authorization": f"Bearer {token}", "Content-Type": "application/json"}

    # -- the session -------------------------------------------------------------------------------

    async def _open_session(self) -> _Session:
        ask = datagram.SessionRequest(
            namespace=self.identity.namespace, pod=self.identity.pod, pod_uid=self.identity.uid
        )
        answer = await request(
            "POST",
            self.url + datagram.SESSION_PATH,
            body=ask.to_json().encode(),
            headers=self._headers(),
            ssl_context=self._ssl,
            within=HTTP_TIMEOUT,
        )
        if answer.status != 200:
            raise HttpClientError(f"session refused ({answer.status}): {answer.text[:200]}")
        grant = datagram.SessionGrant.from_json(answer.body)
        host = urlsplit(self.url).hostname or "localhost"
        transport, _ = await asyncio.get_running_loop().create_datagram_endpoint(
            lambda: _ReplyEndpoint(self._on_datagram), remote_addr=(host, grant.port)
        )
        if self._session is not None:
            self._session.transport.close()
        log.info("report session opened with %s:%s until %s", host, grant.port, time.ctime(grant.expires_at))
        return _Session(grant.session, base64.b64decode(grant.key), grant.expires_at, transport)

    def _on_datagram(self, data: bytes) -> None:
        try:
            kind, fields = datagram.parse(data)
        except datagram.DatagramError as exc:
            log.debug("ignoring a datagram: %s", exc)
            return
        if kind == datagram.RENEW:
            # The operator cannot check our session (it restarted with another key, or it expired).
            if time.monotonic() - self._renew_asked_at >= datagram.RENEW_MIN_SECONDS:
                self._renew_asked_at = time.monotonic()
                log.info("the operator asks for a new report session: %s", fields[0].decode(errors="replace"))
                self._renew.set()
                self._wake.set()
            return
        if kind != datagram.ANSWER or self._session is None:
            return
        try:
            answer = datagram.open_answer(self._session.key, fields)
        except datagram.DatagramError as exc:
            log.warning("ignoring an answer that does not verify: %s", exc)
            return
        if answer.seq >= 0:
            # `failures` counts the report just answered too (it is raised on every send).
            if self.failures > 1:
                log.info("reports reach the operator again after %d unanswered", self.failures - 1)
            self.answered += 1
            self.failures = 0
            if answer.seq >= self._carried_seq and self._carried:
                del self._pending[: self._carried]
                self._carried = 0
                if self._pending:  # more than one report could carry: send the rest now
                    self._wake.set()
        stale = answer.config_hash and answer.config_hash != self.sidecar.routes.config_hash
        if stale and (self._fetching is None or self._fetching.done()):
            self._fetching = asyncio.get_running_loop().create_task(self._fetch_config())

    # -- loops -------------------------------------------------------------------------------------

    async def _report_loop(self) -> None:
        backoff = 1.0
        while True:
            session = self._session
            if (
                session is None
                or self._renew.is_set()
                or time.time() > session.expires_at - RENEW_BEFORE_SECONDS
            ):
                self._renew.clear()
                try:
                    self._session = session = await self._open_session()
                except (OSError, TimeoutError, datagram.DatagramError) as exc:
                    self.failures += 1
                    if self.failures == 1 or self.failures % 20 == 0:
                        log.warning("no report session with %s (%d tries): %s", self.url, self.failures, exc)
                    await asyncio.sleep(backoff)
                    backoff = min(backoff * 2, 30.0)
                    continue
                backoff = 1.0
            report = self.snapshot()
            body = report.to_json().encode()
            session.transport.sendto(datagram.report_datagram(session.session_id, session.key, body))
            self.sent += 1
            self.failures += 1  # until answered
            await self._wait_for_next(time.monotonic())
            if self._wake.is_set():
                await asyncio.sleep(BATCH_SECONDS)  # one report for a burst of transitions
            self._wake.clear()

    async def _wait_for_next(self, sent_at: float) -> None:
        """Until a transition, the summary interval, or (while the last transitions are unanswered) the
        resend delay: an answer arriving meanwhile cancels the resend."""
        resend = RESEND_SECONDS * random.uniform(0.5, 1.5)
        while not self._wake.is_set():
            due = sent_at + (resend if self._carried else self.interval)
            left = due - time.monotonic()
            if left <= 0:
                return
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), min(left, RESEND_SECONDS))

    async def _fetch_config(self) -> None:
        params = {
            "hash": self.sidecar.routes.config_hash,
            "namespace": self.identity.namespace,
            "pod": self.identity.pod,
            "uid": self.identity.uid,
        }
        session = self._session
        # The session proves who we are without a TokenReview; the token is the fallback (a session
        # the operator no longer accepts: it restarted with another serving key).
        ways: list[Callable[[], dict[str, str]]] = [self._headers]
        if session is not None:
            proof = datagram.session_authorization(session.session_id, session.key)
            ways.insert(0, lambda: {"Authorization": proof})
        for i, way in enumerate(ways):
            try:
                answer = await request(
                    "GET",
                    self.url + CONFIG_PATH,
                    params=params,
                    headers=way(),
                    ssl_context=self._ssl,
                    within=HTTP_TIMEOUT,
                )
                if answer.status == 401 and i + 1 < len(ways):
                    continue
                if answer.status != 200:
                    raise HttpClientError(f"config fetch refused ({answer.status}): {answer.text[:200]}")
                reply = PlainConfigReply.from_json(answer.body)
            except (OSError, TimeoutError, InvalidInput) as exc:
                log.warning("fetching the pod's new config failed (the next answer retries): %s", exc)
                return
            await self._maybe_apply(reply)
            return

    async def _maybe_apply(self, reply: PlainConfigReply) -> None:
        if reply.config is None or reply.config_hash == self.sidecar.routes.config_hash:
            return
        try:
            await self.on_config(reply.config)
        except Exception as exc:  # the running config stays; the error shows on /readyz and /stats
            log.warning("config %s from the operator not applied: %s", reply.config_hash, exc)


def describe(reporter: Reporter) -> dict[str, Any]:
    return {
        "url": reporter.url,
        "sent": reporter.sent,
        "answered": reporter.answered,
        "consecutiveFailures": reporter.failures,
    }
