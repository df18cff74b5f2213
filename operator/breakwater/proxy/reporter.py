"""The sidecar's half of the report channel: push breaker states, receive the pod's config.

A report goes out at once (batched over a few milliseconds) on every breaker transition, and as a
summary every `interval` seconds. A long poll keeps one request open to the operator, answered as
soon as the pod's config changes, so policy edits arrive in about a second instead of after the
kubelet's ConfigMap refresh. The mounted ConfigMap keeps working while the operator is away.
Authentication: the pod's projected service-account token (re-read for each request: the kubelet
rotates it).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import ssl
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import pydantic

from breakwater.api.report import (
    CONFIG_PATH,
    REPORT_PATH,
    ConfigReply,
    SidecarReport,
    TransitionReport,
    UpstreamReport,
)
from breakwater.api.sidecar import SidecarConfig
from breakwater.proxy.sidecar import Sidecar
from breakwater.proxy.stats import TransitionEvent, wall_time

log = logging.getLogger("breakwater.proxy.reporter")

MAX_PENDING_TRANSITIONS = 256
BATCH_SECONDS = 0.02


@dataclass(frozen=True)
class PodIdentity:
    namespace: str
    pod: str
    uid: str = ""


@dataclass
class Reporter:
    sidecar: Sidecar
    url: str
    identity: PodIdentity
    token_file: Path
    on_config: Callable[[SidecarConfig], Awaitable[None]]
    ca_pem: str = ""
    interval: float = 5.0
    long_poll: float = 25.0
    sent: int = 0
    failures: int = 0
    _pending: list[TransitionReport] = field(default_factory=list)
    _wake: asyncio.Event = field(default_factory=asyncio.Event)
    _tasks: list[asyncio.Task[None]] = field(default_factory=list)
    _session: aiohttp.ClientSession | None = None

    def __post_init__(self) -> None:
        self.sidecar.transition_listeners.append(self._on_transition)

    def _on_transition(self, event: TransitionEvent) -> None:
        if len(self._pending) >= MAX_PENDING_TRANSITIONS:
            del self._pending[0]
        self._pending.append(
            TransitionReport(
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
        context = ssl.create_default_context(cadata=self.ca_pem) if self.ca_pem else None
        connector = aiohttp.TCPConnector(ssl=context if context is not None else True, limit=4)
        self._session = aiohttp.ClientSession(connector=connector)
        self._tasks = [
            asyncio.create_task(self._report_loop(), name="breakwater-report"),
            asyncio.create_task(self._config_loop(), name="breakwater-config-poll"),
        ]
        log.info("reporting to %s every %.0f s and on each transition", self.url, self.interval)

    async def stop(self) -> None:
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        if self._session is not None:
            await self._session.close()

    # -- what is sent ------------------------------------------------------------------------------

    def snapshot(self) -> SidecarReport:
        upstreams = []
        for up in self.sidecar.routes.by_name.values():
            snap = up.breaker.snapshot()  # evaluates Open -> HalfOpen lazily: that transition is reported too
            upstreams.append(
                UpstreamReport(
                    name=up.name,
                    policy=up.policy,
                    state=snap.state.value,
                    mode=snap.mode.value,
                    calls=snap.calls,
                    failures=snap.failures,
                    rejections=snap.rejections,
                    would_reject=snap.would_reject,
                    trips=snap.trips,
                    window_calls=snap.window_calls,
                    failure_rate=snap.window_failure_rate,
                    slow_rate=snap.window_slow_rate,
                    state_since=wall_time(snap.state_since, clock=self.sidecar.clock),
                )
            )
        transitions, self._pending = self._pending, []
        return SidecarReport(
            namespace=self.identity.namespace,
            pod=self.identity.pod,
            pod_uid=self.identity.uid,
            config_hash=self.sidecar.routes.config_hash,
            seq=self.sent,
            sent_at=time.time(),
            upstreams=upstreams,
            transitions=transitions,
        )

    def _headers(self) -> dict[str, str]:
        token = self.token_file.read_text().strip()
        return {"Authorization": f"Bearer {token}", "Content-Type": "application/json"}

    # -- loops -------------------------------------------------------------------------------------

    async def _report_loop(self) -> None:
        backoff = 1.0
        while True:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), self.interval)
            if self._wake.is_set():
                await asyncio.sleep(BATCH_SECONDS)  # one report for a burst of transitions
            self._wake.clear()
            report = self.snapshot()
            try:
                reply = await self._post(report)
            except (aiohttp.ClientError, OSError, TimeoutError, pydantic.ValidationError) as exc:
                self.failures += 1
                self._pending[:0] = list(report.transitions)[-MAX_PENDING_TRANSITIONS:]
                if self.failures == 1 or self.failures % 20 == 0:
                    log.warning("report to %s failed (%d in a row): %s", self.url, self.failures, exc)
                await asyncio.sleep(min(backoff, self.interval))
                backoff = min(backoff * 2, 30.0)
                continue
            if self.failures:
                log.info("reports reach the operator again after %d failures", self.failures)
            self.failures, backoff = 0, 1.0
            self.sent += 1
            await self._maybe_apply(reply)

    async def _post(self, report: SidecarReport) -> ConfigReply:
        assert self._session is not None
        body = report.model_dump_json(by_alias=True)
        timeout = aiohttp.ClientTimeout(total=10)
        async with self._session.post(
            self.url + REPORT_PATH, data=body, headers=self._headers(), timeout=timeout
        ) as resp:
            text = await resp.text()
            if resp.status != 200:
                raise aiohttp.ClientResponseError(
                    resp.request_info, (), status=resp.status, message=text[:200]
                )
            return ConfigReply.model_validate_json(text)

    async def _config_loop(self) -> None:
        assert self._session is not None
        backoff = 1.0
        while True:
            params = {
                "hash": self.sidecar.routes.config_hash,
                "wait": str(self.long_poll),
                "namespace": self.identity.namespace,
                "pod": self.identity.pod,
                "uid": self.identity.uid,
            }
            timeout = aiohttp.ClientTimeout(total=self.long_poll + 10)
            try:
                async with self._session.get(
                    self.url + CONFIG_PATH, params=params, headers=self._headers(), timeout=timeout
                ) as resp:
                    text = await resp.text()
                    if resp.status != 200:
                        raise aiohttp.ClientResponseError(
                            resp.request_info, (), status=resp.status, message=text[:200]
                        )
                    reply = ConfigReply.model_validate_json(text)
            except (aiohttp.ClientError, OSError, TimeoutError, pydantic.ValidationError) as exc:
                log.debug("config poll failed: %s", exc)
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, 30.0)
                continue
            backoff = 1.0
            await self._maybe_apply(reply)

    async def _maybe_apply(self, reply: ConfigReply) -> None:
        if reply.config is None or reply.config_hash == self.sidecar.routes.config_hash:
            return
        try:
            await self.on_config(reply.config)
        except Exception as exc:  # the running config stays; the error shows on /readyz and /stats
            log.warning("config %s from the operator not applied: %s", reply.config_hash, exc)


def describe(reporter: Reporter) -> dict[str, Any]:
    return {"url": reporter.url, "sent": reporter.sent, "consecutiveFailures": reporter.failures}
