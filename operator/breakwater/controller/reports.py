"""The report channel, operator side: HTTPS for sessions and config, signed UDP datagrams for reports.

A sidecar opens a session once (`POST /v1/session` with its projected service-account token, audience
`breakwater`); the API server's TokenReview says which pod the token is bound to, and a session for
any other pod is refused (403) and logged. From then on it sends its reports as datagrams signed with
the session key, and the operator answers each with the config hash the pod should run; when a policy
changes, the operator tells every affected sidecar unasked, and the sidecar fetches the new config with
`GET /v1/config`. No connection stays open per sidecar: see `breakwater.api.datagram` for why.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import contextlib
import hashlib
import json
import logging
import math
import socket
import ssl
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import pydantic
from aiohttp import web

from breakwater.api import datagram
from breakwater.api.constants import SIDECAR_ADMIN_PORT, SIDECAR_FORWARD_PROXY_PORT, TOKEN_AUDIENCE
from breakwater.api.report import CONFIG_PATH, ConfigReply, SidecarReport
from breakwater.api.sidecar import SidecarConfig
from breakwater.controller import metrics
from breakwater.controller.fleet import PodReport
from breakwater.controller.resolutions import Labels, Resolutions
from breakwater.controller.state import BundleCache
from breakwater.errors import NotAuthenticated, NotPermitted, PeerRefused
from breakwater.k8s import tokenreview

logger = logging.getLogger(__name__)

TOKEN_CACHE_SECONDS = 60.0
SESSION_MAX_SECONDS = 3600.0
LONG_POLL_MAX_SECONDS = 30.0
MAX_BODY_BYTES = 256 * 1024
WARN_EVERY_SECONDS = 10.0
RECEIVE_BUFFER_BYTES = 8 * 1024 * 1024


@dataclass(slots=True)
class Peer:
    """Where a pod's sidecar listens for answers, and the session it signs with."""

    address: tuple[str, int]
    key: bytes


@dataclass
class FleetStore:
    """The latest report of every pod, by namespace, and how to reach each sidecar."""

    reports: dict[str, dict[str, PodReport]] = field(default_factory=dict)
    peers: dict[str, dict[str, Peer]] = field(default_factory=dict)
    newest: dict[tuple[str, str], tuple[bytes, int]] = field(default_factory=dict)  # -> (session key, seq)
    forged: int = 0

    def fresh(self, namespace: str, pod: str, session_key: bytes, seq: int) -> bool:
        """Whether a report is newer than every one taken from the pod's session, sent or relayed
        (a replayed datagram is not); it becomes the newest if so.

        The session is told by its key (an HMAC of its id under the operator's secret, so one key per
        id): the same bytes object the pod's `Peer` holds, where the id would be another ~160-byte
        string kept per pod."""
        key = (namespace, pod)
        known = self.newest.get(key)
        if known is not None and known[0] == session_key and seq <= known[1]:
            return False
        self.newest[key] = (session_key, seq)
        return True

    def record(self, report: SidecarReport) -> None:
        self.reports.setdefault(report.namespace, {})[report.pod] = PodReport.of(report, time.monotonic())

    def in_namespace(self, namespace: str) -> dict[str, PodReport]:
        return self.reports.get(namespace, {})

    def forget(self, namespace: str, pod: str) -> None:
        self.reports.get(namespace, {}).pop(pod, None)
        self.peers.get(namespace, {}).pop(pod, None)
        self.newest.pop((namespace, pod), None)


@dataclass
class Authenticator:
    api: Any
    _cache: dict[str, tuple[tokenreview.PodIdentity, float]] = field(default_factory=dict)
    _purged_at: float = 0.0

    async def identify(self, request: web.Request) -> tuple[tokenreview.PodIdentity, float]:
        """The pod a request's token is bound to, and the token's expiry (wall clock)."""
        header = request.headers.get("Authorization", "")
        if not header.startswith("Bearer "):
            raise NotAuthenticated("a Bearer token (the pod's projected service-account token) is required")
        token = header[len("Bearer ") :].strip()
        key = hashlib.sha256(token.encode()).hexdigest()
        cached = self._cache.get(key)
        if cached is not None and cached[1] > time.monotonic():
            return cached[0], token_expiry(token)
        try:
            identity = await asyncio.to_thread(tokenreview.review, self.api, token, audience=TOKEN_AUDIENCE)
        except NotAuthenticated as exc:
            raise NotAuthenticated(f"token rejected: {exc}") from exc
        now = time.monotonic()
        if now - self._purged_at > TOKEN_CACHE_SECONDS:
            self.purge(now)
        self._cache[key] = (identity, now + TOKEN_CACHE_SECONDS)
        return identity, token_expiry(token)

    def purge(self, now: float | None = None) -> None:
        """Drop expired verdicts. A session lasts up to an hour: most verdicts are never asked for again.
        Also run on a clock (`ReportServer.start`): after a rollout's burst of sessions no token may
        come for an hour, and the burst's verdicts (~470 bytes a pod, measured) would stay until then."""
        now = time.monotonic() if now is None else now
        self._cache = {k: v for k, v in self._cache.items() if v[1] > now}
        self._purged_at = now

    def __len__(self) -> int:
        return len(self._cache)


def token_expiry(token: str) -> float:
    """The `exp` claim of a JWT the API server already verified; an hour from now if it has none."""
    try:
        payload = token.split(".")[1]
        claims = json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))
        return float(claims["exp"])
    except (IndexError, KeyError, TypeError, ValueError, binascii.Error):
        return time.time() + SESSION_MAX_SECONDS


def _check_claim(identity: tokenreview.PodIdentity, namespace: str, pod: str, uid: str) -> None:
    if (identity.namespace, identity.pod) != (namespace, pod) or (
        uid and identity.pod_uid and uid != identity.pod_uid
    ):
        raise Forged(
            f"this token belongs to pod {identity.namespace}/{identity.pod}, "
            f"not to the pod {namespace}/{pod} it speaks for"
        )


class Forged(NotPermitted):
    """A sidecar spoke for another pod than the one its token or session belongs to."""


PodLabels = Callable[[str, str], Labels | None]
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]  # (namespace, pod) -> its labels, if known


class _ReportEndpoint(asyncio.DatagramProtocol):
    def __init__(self, on_datagram: Callable[[bytes, tuple[str, int]], None]) -> None:
        self.on_datagram = on_datagram
        self._warned_at = -WARN_EVERY_SECONDS

    def datagram_received(self, data: bytes, addr: tuple[str, int]) -> None:
        try:
            self.on_datagram(data, addr)
        except Exception:  # one bad report must not cost the others (nor flood the log)
            now = time.monotonic()
            if now - self._warned_at >= WARN_EVERY_SECONDS:
                self._warned_at = now
                logger.exception("a report datagram from %s:%s could not be handled", *addr[:2])

    def error_received(self, exc: Exception) -> None:
        logger.debug("report channel: %s", exc)


@dataclass
class ReportServer:
    api: Any
    bundles: BundleCache
    store: FleetStore
    pod_labels: PodLabels
    secret: bytes  # signs session keys; derived from the serving key so sessions survive a restart
    admin_port: int = SIDECAR_ADMIN_PORT
    proxy_port: int = SIDECAR_FORWARD_PROXY_PORT
    on_report: Callable[[SidecarReport, PodReport | None], None] | None = None  # (new, the pod's previous)
    resolve_labels: Callable[[str, str], Awaitable[Labels | None]] | None = None  # before the index syncs
    relay_to: Callable[[], tuple[str, int] | None] = lambda: None  # the leader, when it is another replica
    auth: Authenticator = field(init=False)
    resolutions: Resolutions = field(init=False)
    rejected: dict[str, int] = field(default_factory=dict)  # reason -> datagrams dropped
    accepted: int = 0
    relayed: int = 0  # reports relayed to the leader
    port: int = 0
    _runner: web.AppRunner | None = None
    _transport: asyncio.DatagramTransport | None = None
    _warned_at: dict[str, float] = field(default_factory=dict)
    _tasks: set[asyncio.Task[None]] = field(default_factory=set)
    _purging: asyncio.Task[None] | None = None

    def __post_init__(self) -> None:
        self.auth = Authenticator(self.api)
        self.resolutions = Resolutions(self.bundles, self.admin_port, self.proxy_port)
        self.bundles.listeners.append(self._bundles_changed)

    def app(self) -> web.Application:
        app = web.Application(client_max_size=MAX_BODY_BYTES, middlewares=[self._refusals])
        app.router.add_post(datagram.SESSION_PATH, self.handle_session)
        app.router.add_get(CONFIG_PATH, self.handle_config)
        return app

    async def start(self, *, host: str, port: int, ssl_context: ssl.SSLContext | None) -> None:
        self._runner = web.AppRunner(self.app(), access_log=None, handle_signals=False)
        await self._runner.setup()
        await web.TCPSite(self._runner, host, port, ssl_context=ssl_context, reuse_address=True).start()
        loop = asyncio.get_running_loop()
        transport, _ = await loop.create_datagram_endpoint(
            lambda: _ReportEndpoint(self.datagram_received), local_addr=(host, port)
        )
        self._transport = transport
        self.port = port
        self._purging = loop.create_task(self._purge_verdicts(), name="breakwater-token-verdicts")
        sock = transport.get_extra_info("socket")
        if sock is not None:
            # A storm (every sidecar of a fleet trips at once) arrives as one burst: give the kernel room
            # to queue it while the loop is busy (capped by net.core.rmem_max; a dropped report is resent).
            with contextlib.suppress(OSError):
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, RECEIVE_BUFFER_BYTES)
            logger.info(
                "report datagrams: %d KiB receive buffer",
                sock.getsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF) // 1024,
            )
        logger.info("report channel listening on %s:%s (sessions over TLS, reports over UDP)", host, port)

    async def _purge_verdicts(self) -> None:
        while True:
            await asyncio.sleep(TOKEN_CACHE_SECONDS)
            self.auth.purge()

    async def stop(self) -> None:
        if self._purging is not None:
            self._purging.cancel()
        if self._transport is not None:
            self._transport.close()
        if self._runner is not None:
            await self._runner.cleanup()

    # -- HTTPS: sessions and config ------------------------------------------------------------------

    @web.middleware
    async def _refusals(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        """The HTTP boundary: a refused peer gets 401 (who are you?) or 403 (not yours), and a line in
        the log; a sidecar speaking for another pod is counted as a forgery."""
        try:
            return await handler(request)
        except PeerRefused as exc:
            what = "a forged request" if isinstance(exc, Forged) else "a request"
            if isinstance(exc, Forged):
                self.store.forged += 1
            logger.warning(
                "rejected %s (%s %s from %s): %s", what, request.method, request.path, request.remote, exc
            )
            status = 403 if isinstance(exc, NotPermitted) else 401
            return web.Response(status=status, text=f"{exc}\n")

    async def handle_session(self, request: web.Request) -> web.Response:
        identity, token_expires = await self.auth.identify(request)
        try:
            ask = datagram.SessionRequest.from_json(await request.read())
        except datagram.DatagramError as exc:
            raise web.HTTPBadRequest(text=f"not a session request: {exc}") from exc
        _check_claim(identity, ask.namespace, ask.pod, ask.pod_uid)
        expires = int(min(token_expires, time.time() + SESSION_MAX_SECONDS))
        session = datagram.Session(ask.namespace, ask.pod, ask.pod_uid or identity.pod_uid, expires)
        session_id = session.encode()
        grant = datagram.SessionGrant(
            session=session_id,
            key=base64.b64encode(datagram.session_key(self.secret, session_id)).decode(),
            expires_at=expires,
            port=self.port,
        )
        logger.debug("session for pod %s/%s until %s", ask.namespace, ask.pod, expires)
        metrics.METRICS.granted_session()
        return web.Response(text=grant.to_json(), content_type="application/json")

    async def desired(self, namespace: str, pod: str) -> SidecarConfig | None:
        labels = self.pod_labels(namespace, pod)
        if labels is None and self.resolve_labels is not None:
            labels = await self.resolve_labels(namespace, pod)
        if labels is None:
            return None
        return await self.resolutions.config(namespace, labels)

    def _session_identity(self, request: web.Request) -> tokenreview.PodIdentity:
        header = request.headers.get("Authorization", "")
        try:
            session = datagram.check_session_authorization(self.secret, header, now=time.time())
        except datagram.DatagramError as exc:
            raise NotAuthenticated(f"session rejected: {exc}") from exc
        return tokenreview.PodIdentity(session.namespace, session.pod, session.uid, service_account="")

    async def handle_config(self, request: web.Request) -> web.Response:
        if request.headers.get("Authorization", "").startswith(datagram.SESSION_SCHEME + " "):
            identity = self._session_identity(request)  # no TokenReview: the session key proves it
        else:
            identity, _ = await self.auth.identify(request)
        namespace = request.query.get("namespace", identity.namespace)
        pod = request.query.get("pod", identity.pod)
        _check_claim(identity, namespace, pod, request.query.get("uid", ""))
        running = request.query.get("hash", "")
        try:
            wait = float(request.query.get("wait", "0") or 0)
        except ValueError as exc:
            raise web.HTTPBadRequest(text="wait must be a number of seconds") from exc
        wait = min(wait, LONG_POLL_MAX_SECONDS) if math.isfinite(wait) else 0.0
        deadline = time.monotonic() + wait
        while True:
            version = self.bundles.version(namespace)
            desired = await self.desired(namespace, pod)
            if desired is None or desired.config_hash != running or time.monotonic() >= deadline:
                return self._reply(desired, running)
            await self.bundles.wait_change(namespace, version, within=deadline - time.monotonic())

    @staticmethod
    def _reply(desired: SidecarConfig | None, running: str) -> web.Response:
        if desired is None:
            return web.json_response({"configHash": running}, status=200)
        config = desired if desired.config_hash != running else None
        reply = ConfigReply(config_hash=desired.config_hash, config=config)
        return web.Response(
            text=reply.model_dump_json(by_alias=True, exclude_none=True), content_type="application/json"
        )

    # -- UDP: reports and answers --------------------------------------------------------------------

    def _reject(self, reason: str, addr: tuple[str, int], detail: str, *, renew: bool = False) -> None:
        self.rejected[reason] = self.rejected.get(reason, 0) + 1
        now = time.monotonic()
        if now - self._warned_at.get(reason, 0.0) >= WARN_EVERY_SECONDS:
            self._warned_at[reason] = now
            logger.warning(
                "rejected a report datagram from %s:%s: %s (%d %s so far)",
                addr[0], addr[1], detail, self.rejected[reason], reason,
            )  # fmt: skip
        if renew and self._transport is not None:
            self._transport.sendto(datagram.renew_datagram(reason), addr)

    def datagram_received(self, data: bytes, addr: tuple[str, int]) -> None:
        """A report from a sidecar, or one another replica relays (verified and judged the same way;
        taken into the fleet view, but neither answered nor relayed again)."""
        inner = datagram.unwrap_relay(data)
        relayed = inner is not None
        if inner is not None:
            data = inner
        try:
            received = datagram.parse_report(data)
            session = datagram.Session.decode(received.session_id)
        except datagram.DatagramError as exc:
            self._reject("malformed", addr, str(exc))
            return
        whose = f"pod {session.namespace}/{session.pod}"
        if session.expires_at < time.time():
            self._reject("expired", addr, f"session of {whose} expired", renew=True)
            return
        key = datagram.session_key(self.secret, received.session_id)
        try:
            received.verify(key)
        except datagram.DatagramError:
            # An operator with another serving key (rotated) also lands here: the sidecar renews.
            self.store.forged += 1
            self._reject("bad-signature", addr, f"bad signature for a session of {whose}", renew=True)
            return
        try:
            report = SidecarReport.model_validate_json(received.body)
        except pydantic.ValidationError as exc:
            self._reject("invalid", addr, f"not a sidecar report: {exc.error_count()} errors")
            return
        if (report.namespace, report.pod) != (session.namespace, session.pod) or (
            report.pod_uid and session.uid and report.pod_uid != session.uid
        ):
            self.store.forged += 1
            claimed = f"pod {report.namespace}/{report.pod}"
            self._reject("claims-other-pod", addr, f"session of {whose} claims {claimed}")
            return
        if not self.store.fresh(report.namespace, report.pod, key, report.seq):
            self.rejected["replayed"] = self.rejected.get("replayed", 0) + 1
            return
        if not relayed:
            peers = self.store.peers.setdefault(report.namespace, {})
            peers[report.pod] = Peer(addr, key)
        before = self.store.in_namespace(report.namespace).get(report.pod)
        self.store.record(report)
        self.accepted += 1
        if not relayed:  # logged once, by the replica the sidecar sent it to
            for t in report.transitions:
                logger.info(
                    "pod %s/%s: upstream %s %s -> %s (%s)",
                    report.namespace, report.pod, t.upstream, t.from_state, t.to_state, t.reason,
                    extra={"fields": {"namespace": report.namespace, "pod": report.pod,
                                      "upstream": t.upstream, "state": t.to_state}},
                )  # fmt: skip
        if self.on_report is not None:
            self.on_report(report, before)
        if relayed:
            return
        self._answer(report.namespace, report.pod, report.seq)
        leader = self.relay_to()
        if leader is not None and self._transport is not None:
            self._transport.sendto(datagram.relay_datagram(data), leader)
            self.relayed += 1

    def _answer(self, namespace: str, pod: str, seq: int) -> None:
        labels = self.pod_labels(namespace, pod)
        if labels is not None:
            found = self.resolutions.cached(namespace, labels)
            if found is not None:
                self._send_answer(namespace, pod, seq, found.config_hash)
                return
        task = asyncio.get_running_loop().create_task(self._answer_slowly(namespace, pod, seq))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _answer_slowly(self, namespace: str, pod: str, seq: int) -> None:
        try:
            labels = self.pod_labels(namespace, pod)
            if labels is None and self.resolve_labels is not None:
                labels = await self.resolve_labels(namespace, pod)
            wanted = (await self.resolutions.get(namespace, labels)).config_hash if labels is not None else ""
        except Exception as exc:  # the API is away: the sidecar keeps its config and reports again
            logger.warning("cannot resolve the config of pod %s/%s: %s", namespace, pod, exc)
            return
        self._send_answer(namespace, pod, seq, wanted)

    def _send_answer(self, namespace: str, pod: str, seq: int, config_hash: str) -> None:
        peer = self.store.peers.get(namespace, {}).get(pod)
        if peer is None or self._transport is None:
            return
        answer = datagram.ReportAnswer(seq=seq, config_hash=config_hash)
        self._transport.sendto(datagram.answer_datagram(peer.key, answer), peer.address)

    def _bundles_changed(self, namespace: str) -> None:
        """A policy changed: tell each sidecar of the namespace that runs another config than it should."""
        if not self.store.peers.get(namespace):
            return
        task = asyncio.get_running_loop().create_task(self._notify(namespace))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _notify(self, namespace: str) -> None:
        told = 0
        for pod, peer in list(self.store.peers.get(namespace, {}).items()):
            labels = self.pod_labels(namespace, pod)
            if labels is None:
                continue
            try:
                wanted = (await self.resolutions.get(namespace, labels)).config_hash
            except Exception as exc:
                logger.warning("cannot tell the sidecars of %s about a policy change: %s", namespace, exc)
                return
            report = self.store.in_namespace(namespace).get(pod)
            running = report.config_hash if report else ""
            if wanted and wanted != running and self._transport is not None:
                self._transport.sendto(
                    datagram.answer_datagram(peer.key, datagram.ReportAnswer(config_hash=wanted)),
                    peer.address,
                )
                told += 1
        if told:
            metrics.METRICS.pushed_config(told)
            logger.info("told %d sidecars in %s that their config changed", told, namespace)
