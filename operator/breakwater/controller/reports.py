"""The report endpoint: sidecars push breaker states here and receive the config their pod should run.

Every request carries the pod's projected service-account token (audience `breakwater`). The API
server's TokenReview says which pod the token is bound to; a report about any other pod is rejected
(403) and logged. Verdicts are cached for a minute per token, so a fleet reporting every few seconds
costs the API server about one TokenReview per pod per minute.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import ssl
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import pydantic
from aiohttp import web

from breakwater.api.constants import SIDECAR_ADMIN_PORT, SIDECAR_FORWARD_PROXY_PORT
from breakwater.api.report import CONFIG_PATH, REPORT_PATH, ConfigReply, SidecarReport
from breakwater.api.sidecar import SidecarConfig
from breakwater.controller.fleet import PodReport
from breakwater.controller.state import BundleCache
from breakwater.injection.pod import TOKEN_AUDIENCE
from breakwater.injection.resolve import resolve
from breakwater.k8s import tokenreview

logger = logging.getLogger("breakwater.controller.reports")

TOKEN_CACHE_SECONDS = 60.0
LONG_POLL_MAX_SECONDS = 30.0
MAX_BODY_BYTES = 256 * 1024


@dataclass
class FleetStore:
    """The latest report of every pod, by namespace."""

    reports: dict[str, dict[str, PodReport]] = field(default_factory=dict)
    forged: int = 0

    def record(self, report: SidecarReport) -> None:
        self.reports.setdefault(report.namespace, {})[report.pod] = PodReport(report, time.monotonic())

    def in_namespace(self, namespace: str) -> dict[str, PodReport]:
        return self.reports.get(namespace, {})

    def forget(self, namespace: str, pod: str) -> None:
        self.reports.get(namespace, {}).pop(pod, None)


@dataclass
class Authenticator:
    api: Any
    _cache: dict[str, tuple[tokenreview.PodIdentity, float]] = field(default_factory=dict)

    async def identify(self, request: web.Request) -> tokenreview.PodIdentity:
        header = request.headers.get("Authorization", "")
        if not header.startswith("Bearer "):
            raise web.HTTPUnauthorized(
                text="a Bearer token (the pod's projected service-account token) is required"
            )
        token = header[len("Bearer ") :].strip()
        key = hashlib.sha256(token.encode()).hexdigest()
        cached = self._cache.get(key)
        if cached is not None and cached[1] > time.monotonic():
            return cached[0]
        try:
            identity = await asyncio.to_thread(tokenreview.review, self.api, token, audience=TOKEN_AUDIENCE)
        except tokenreview.NotAuthenticated as exc:
            logger.warning("rejected a report from %s: %s", request.remote, exc)
            raise web.HTTPUnauthorized(text=f"token rejected: {exc}") from exc
        if len(self._cache) > 50_000:
            self._cache.clear()
        self._cache[key] = (identity, time.monotonic() + TOKEN_CACHE_SECONDS)
        return identity


def _check_claim(identity: tokenreview.PodIdentity, namespace: str, pod: str, uid: str) -> None:
    if (identity.namespace, identity.pod) != (namespace, pod) or (
        uid and identity.pod_uid and uid != identity.pod_uid
    ):
        logger.warning(
            "rejected a forged report: token of pod %s/%s claims pod %s/%s",
            identity.namespace, identity.pod, namespace, pod,
        )  # fmt: skip
        raise web.HTTPForbidden(text=f"this token belongs to pod {identity.namespace}/{identity.pod}")


PodLabels = Callable[[str, str], "asyncio.Future[dict[str, str] | None] | Any"]


@dataclass
class ReportServer:
    api: Any
    bundles: BundleCache
    store: FleetStore
    pod_labels: Callable[[str, str], Any]  # async (namespace, pod) -> labels or None
    admin_port: int = SIDECAR_ADMIN_PORT
    proxy_port: int = SIDECAR_FORWARD_PROXY_PORT
    on_report: Callable[[str], None] | None = None  # namespace: something changed there
    auth: Authenticator = field(init=False)
    _runner: web.AppRunner | None = None

    def __post_init__(self) -> None:
        self.auth = Authenticator(self.api)

    def app(self) -> web.Application:
        app = web.Application(client_max_size=MAX_BODY_BYTES)
        app.router.add_post(REPORT_PATH, self.handle_report)
        app.router.add_get(CONFIG_PATH, self.handle_config)
        return app

    async def start(self, *, host: str, port: int, ssl_context: ssl.SSLContext | None) -> None:
        self._runner = web.AppRunner(self.app(), access_log=None, handle_signals=False)
        await self._runner.setup()
        await web.TCPSite(self._runner, host, port, ssl_context=ssl_context, reuse_address=True).start()
        logger.info("report endpoint listening on %s:%s", host, port)

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()

    async def desired(self, namespace: str, pod: str) -> SidecarConfig | None:
        labels = await self.pod_labels(namespace, pod)
        if labels is None:
            return None
        bundles = await self.bundles.get(namespace)
        return resolve(
            labels, bundles.values(), admin_port=self.admin_port, proxy_port=self.proxy_port
        ).config

    async def handle_report(self, request: web.Request) -> web.Response:
        identity = await self.auth.identify(request)
        try:
            report = SidecarReport.model_validate_json(await request.read())
        except pydantic.ValidationError as exc:
            raise web.HTTPBadRequest(text=f"not a sidecar report: {exc.error_count()} errors") from exc
        try:
            _check_claim(identity, report.namespace, report.pod, report.pod_uid)
        except web.HTTPForbidden:
            self.store.forged += 1
            raise
        self.store.record(report)
        for t in report.transitions:
            logger.info(
                "pod %s/%s: upstream %s %s -> %s (%s)",
                report.namespace, report.pod, t.upstream, t.from_state, t.to_state, t.reason,
            )  # fmt: skip
        if self.on_report is not None:
            self.on_report(report.namespace)
        return self._reply(await self.desired(report.namespace, report.pod), report.config_hash)

    async def handle_config(self, request: web.Request) -> web.Response:
        identity = await self.auth.identify(request)
        namespace = request.query.get("namespace", identity.namespace)
        pod = request.query.get("pod", identity.pod)
        _check_claim(identity, namespace, pod, request.query.get("uid", ""))
        running = request.query.get("hash", "")
        wait = min(float(request.query.get("wait", "0") or 0), LONG_POLL_MAX_SECONDS)
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
