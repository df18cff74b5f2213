"""What the leader does, and only the leader: every write the operator makes.

A term starts when this replica takes the Lease (`k8s.lease.LeaseElector`) and ends when it loses or
releases it. During a term: the webhook certificate is renewed when due, the MutatingWebhookConfiguration
kept right, kopf runs the policy handlers (`controller.policies`: ConfigMaps, finalizers, kopf's own
annotations) and the status loop (`controller.refresher`) writes status and posts Events. The fleet's
reports and the caches belong to the replica, not to the term: a new leader starts from what it
already received. The adaptive histories (`controller.adaptive`) belong to the term: the leader alone
feeds them, a new leader reads what the last one persisted in each namespace's
breakwater-adaptive-history ConfigMap, and a leader that hands over writes them first. So do the trip
tallies (`controller.trips`, in the status loop): a new leader goes on from the trips the status holds.

Why not kopf's peering: it needs its own cluster-scoped CRD (KopfPeering) and RBAC to write it, its
heartbeat is slow to notice a dead peer (60 s by default), and replicas of equal priority both pause
("freeze") instead of one of them going on. A Lease is what every Kubernetes controller uses, and is
taken over `--lease-seconds` after the leader stops renewing it.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import kopf

from breakwater.controller import metrics, policies, webhook
from breakwater.controller.adaptive import Adaptation
from breakwater.controller.pods import PodIndex
from breakwater.controller.refresher import Refresher
from breakwater.controller.reports import FleetStore, ReportServer
from breakwater.controller.settings import OperatorSettings
from breakwater.controller.state import BundleCache, OperatorState
from breakwater.k8s import events
from breakwater.k8s.aio import AsyncApi

logger = logging.getLogger(__name__)

KOPF_READY_SECONDS = 30.0
KOPF_STOP_SECONDS = 20.0
FLUSH_SECONDS = 5.0  # a leader handing over writes its histories for at most this long


@dataclass
class Replica:
    """What a term works with: the replica's clients, caches and servers."""

    settings: OperatorSettings
    identity: str
    api: Any  # breakwater.k8s.client.ApiClient
    writer: AsyncApi
    bundles: BundleCache
    pods: PodIndex
    store: FleetStore
    reports: ReportServer
    tls: webhook.ServingTLS
    serving: asyncio.Event  # set once this replica's webhook and report endpoints listen


@dataclass
class Term:
    """One leadership term. `start()` on taking the Lease, `stop()` on losing it."""

    replica: Replica
    on_signals: Callable[[], None]  # re-installs the replica's signal handlers (kopf replaces them)
    on_kopf_exit: Callable[[], Awaitable[None]]  # kopf stopped by itself: the replica shuts down
    state: OperatorState = field(init=False)
    refresher: Refresher = field(init=False)
    _kopf_stop: asyncio.Event = field(default_factory=asyncio.Event)
    _tasks: list[asyncio.Task[None]] = field(default_factory=list)
    _stopping: bool = False

    def __post_init__(self) -> None:
        r = self.replica
        self.state = OperatorState(
            api=r.api,
            bundles=r.bundles,
            adaptive=Adaptation(r.api),
            sidecar_ports=(r.settings.sidecar_admin_port, r.settings.sidecar_proxy_port),
        )
        self.refresher = Refresher(
            state=self.state,
            store=r.store,
            resolutions=r.reports.resolutions,
            pods_of=lambda ns: list(r.pods.in_namespace(ns)),
            write_status=metrics.METRICS.timed_status_writes(r.writer.patch_policy_status),
            stale_after=r.settings.stale_after_seconds,
            on_refresh=lambda record: policies.expire_override(record, self.state),
            post_event=self._post_event,
            republish=lambda record: policies.republish(record, self.state),
        )

    async def start(self) -> None:
        r = self.replica
        await r.tls.refresh(leader=True)  # the Secret's certificate: created or renewed if due
        await r.serving.wait()  # never point the API server at a replica that does not listen yet
        await webhook.sync_configuration(r.settings, r.api, r.tls.ca_pem)
        loop = asyncio.get_running_loop()
        ready = asyncio.Event()
        self._tasks = [
            loop.create_task(self._run_kopf(ready), name="breakwater-kopf"),
            loop.create_task(self.refresher.run(), name="breakwater-status-loop"),
        ]
        r.tls.listeners.append(self._certificate_renewed)
        metrics.METRICS.watch_policies(self.refresher)  # the fleet figures of the status it writes
        try:
            await asyncio.wait_for(ready.wait(), KOPF_READY_SECONDS)
        except TimeoutError:
            logger.warning("kopf did not start within %.0f s", KOPF_READY_SECONDS)
        self.on_signals()  # kopf installed its own SIGTERM handler when it started: ours again
        logger.info("leading: policies are reconciled and statuses written by this replica (%s)", r.identity)

    async def stop(self) -> None:
        """End the term: kopf and the status loop stop before another replica may take over."""
        self._stopping = True
        r = self.replica
        metrics.METRICS.watch_policies(None)
        with contextlib.suppress(ValueError):
            r.tls.listeners.remove(self._certificate_renewed)
        self._kopf_stop.set()
        if self._tasks:
            kopf_task, *others = self._tasks
            for task in others:
                task.cancel()
            done, _ = await asyncio.wait([kopf_task], timeout=KOPF_STOP_SECONDS)
            if not done:
                logger.warning("kopf did not stop within %.0f s; cancelling it", KOPF_STOP_SECONDS)
                kopf_task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        await self._flush_histories()
        r.bundles.forget_writes()

    async def _flush_histories(self) -> None:
        """Persist every history before the Lease goes: the next leader starts from them."""
        adaptation: Adaptation = self.state.adaptive
        try:
            await asyncio.wait_for(adaptation.flush(), FLUSH_SECONDS)
        except TimeoutError:
            logger.warning("the adaptive histories were not all written within %.0f s", FLUSH_SECONDS)
        except Exception as exc:
            logger.warning("could not write the adaptive histories: %s", exc)

    async def _run_kopf(self, ready: asyncio.Event) -> None:
        s = self.replica.settings
        settings = policies.kopf_settings()
        settings.process.ultimate_exiting_timeout = None  # kopf never SIGKILLs the replica
        try:
            await kopf.operator(
                registry=policies.REGISTRY,
                settings=settings,
                memo=kopf.Memo(term=policies.TermMemo(self.state, self.refresher)),
                identity=self.replica.identity,  # type: ignore[arg-type]  # kopf's NewType of str
                standalone=True,
                clusterwide=not s.watch_namespaces,
                namespaces=s.watch_namespaces,
                stop_flag=self._kopf_stop,
                ready_flag=ready,
            )
        except asyncio.CancelledError:
            raise
        except Exception:
            logger.exception("kopf failed")
        if not self._stopping:
            logger.error("kopf stopped while this replica leads: shutting the replica down")
            await self.on_kopf_exit()

    def _certificate_renewed(self) -> None:
        task = asyncio.get_running_loop().create_task(self._sync_webhook())
        self._tasks.append(task)

    async def _sync_webhook(self) -> None:
        r = self.replica
        try:
            await webhook.sync_configuration(r.settings, r.api, r.tls.ca_pem)
        except Exception:
            logger.exception("could not put the renewed CA in the webhook configuration; retrying next check")

    async def _post_event(self, involved: dict[str, Any], kind: str, reason: str, message: str) -> None:
        body = events.event_body(involved=involved, kind=kind, reason=reason, message=message)
        await self.replica.writer.create_event(body["metadata"]["namespace"], body)
