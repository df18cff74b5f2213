"""One operator replica, from start to stop.

Every replica, leader or not: watches policies, pods and the operator's ConfigMaps (read-only), serves
the admission webhooks (`controller.admission_server`) and the report channel (`controller.reports`),
answers the kubelet's probes, and campaigns for the Lease. The replica holding the Lease also runs a
leadership term (`controller.leadership`), which makes every write. A report that reaches a replica
which does not lead is relayed to the leader, so the leader sees the whole fleet.

Shutdown (SIGTERM): readiness fails at once, the term stops and the Lease is released (the next
leader takes over within one renew period), the API server's keep-alive connections are closed
(`AdmissionServer.drain`), admissions are still answered for `--shutdown-delay-seconds` while the
endpoints drop this replica, then everything stops.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import hmac
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from breakwater.api.report import SidecarReport
from breakwater.controller import admission, memory, metrics
from breakwater.controller.admission_server import AdmissionServer
from breakwater.controller.fleet import PodReport
from breakwater.controller.leadership import Replica, Term
from breakwater.controller.pods import PodIndex
from breakwater.controller.pods import facts as pod_facts
from breakwater.controller.probes import ProbeServer
from breakwater.controller.refresher import Refresher
from breakwater.controller.reports import FleetStore, ReportServer
from breakwater.controller.resolutions import Labels
from breakwater.controller.settings import OperatorSettings, lease_name
from breakwater.controller.state import BundleCache, configmap_bundles
from breakwater.controller.webhook import ServingTLS, describe
from breakwater.k8s import pods as pod_api
from breakwater.k8s import webhooks
from breakwater.k8s.aio import AsyncApi
from breakwater.k8s.client import api_client
from breakwater.k8s.lease import LeaseElector
from breakwater.k8s.listwatch import BUNDLES, POLICIES, ListWatch

logger = logging.getLogger(__name__)


def session_secret(key_pem: bytes) -> bytes:
    """What signs report sessions: the same on every replica (they serve the same key), and kept across
    restarts while the key stays, so sidecars keep their sessions."""
    return hmac.digest(key_pem, b"breakwater report sessions", hashlib.sha256)


def host_port(address: str) -> tuple[str, int] | None:
    host, _, port = address.rpartition(":")
    return (host.strip("[]"), int(port)) if host and port.isdigit() else None


@dataclass
class OperatorReplica:
    settings: OperatorSettings
    identity: str
    stopping: asyncio.Event  # set to shut down (SIGTERM, or kopf stopping by itself)
    install_signals: Callable[[], None]
    term: Term | None = None
    draining: bool = False
    _term_start: asyncio.Task[None] | None = None
    _watches: list[ListWatch[Any]] = field(default_factory=list)
    _background: list[asyncio.Task[None]] = field(default_factory=list)

    async def run(self) -> None:
        settings = self.settings
        loop = asyncio.get_running_loop()
        api = await asyncio.to_thread(api_client, settings.kubeconfig)
        writer = AsyncApi(api)
        namespaces = settings.watch_namespaces
        bundles = BundleCache(api)
        view = admission.PolicyView()
        pods = PodIndex()
        self._watches = [
            ListWatch(api, bundles, configmap_bundles, resource=BUNDLES, namespaces=namespaces),
            ListWatch(api, view, admission.slim, resource=POLICIES, namespaces=namespaces),
            ListWatch(api, pods, pod_facts, namespaces=namespaces),
        ]
        for watch in self._watches:
            watch.start(loop)
        tls = ServingTLS(settings, api)
        store = FleetStore()
        reports = ReportServer(
            api=api,
            bundles=bundles,
            store=store,
            pod_labels=lambda ns, pod: _labels(pods, ns, pod),
            secret=b"",  # once the certificate is loaded
            admin_port=settings.sidecar_admin_port,
            proxy_port=settings.sidecar_proxy_port,
            resolve_labels=lambda ns, pod: _labels_from_api(api, pods, ns, pod),
        )
        admissions = AdmissionServer(
            settings=settings,
            view=view,
            reads=admission.ConsistentReads(writer),
            bundles=bundles,
            ca_pem=lambda: tls.ca_pem,
        )
        serving = asyncio.Event()
        parts = Replica(settings, self.identity, api, writer, bundles, pods, store, reports, tls, serving)
        elector = LeaseElector(
            writer,
            namespace=settings.operator_namespace,
            name=lease_name(settings),
            identity=self.identity,
            reports_address=settings.report_advertise,
            lease_seconds=settings.lease_seconds,
            renew_every=settings.lease_seconds / 5,
            on_change=lambda leader: self._leadership(parts, leader),
        )
        reports.relay_to = lambda: None if elector.leader else host_port(elector.holder_reports)
        metrics.METRICS.watch_reports(reports)
        reports.on_report = self._on_report
        pods.listeners.append(lambda ns: self._pods_changed(store, pods, ns))

        ca_trusted = asyncio.Event()

        def not_ready() -> list[str]:
            missing = [
                what
                for what, ok in (
                    ("shutting down", not self.draining),
                    ("webhook and report endpoints not listening", serving.is_set()),
                    ("policies not listed", view.synced.is_set()),
                    ("pods not listed", pods.synced.is_set()),
                    ("sidecar ConfigMaps not listed", bundles.synced.is_set()),
                    ("the webhook configuration does not trust this replica's CA yet", ca_trusted.is_set()),
                )
                if not ok
            ]
            return missing

        probes = ProbeServer(not_ready)
        if settings.health_listen:
            host, _, port = settings.health_listen.rpartition(":")
            await probes.start(host=host or "0.0.0.0", port=int(port))
        election = loop.create_task(elector.run(), name="breakwater-leader-election")
        try:
            await tls.load(leader=lambda: elector.leader)
            reports.secret = session_secret(tls.key_pem)
            tls.listeners.append(lambda: setattr(reports, "secret", session_secret(tls.key_pem)))
            await admissions.start(
                host=settings.webhook_listen_host, port=settings.webhook_listen_port, ssl_context=tls.context
            )
            await reports.start(
                host=settings.report_listen_host, port=settings.report_listen_port, ssl_context=tls.context
            )
            serving.set()
            logger.info(describe(settings, tls))
            self._background = [
                loop.create_task(tls.keep_current(leader=lambda: elector.leader), name="breakwater-cert"),
                loop.create_task(self._wait_ca_trusted(api, tls, ca_trusted), name="breakwater-ca-trusted"),
                loop.create_task(memory.trim_forever(), name="breakwater-memory-trim"),
            ]
            await self.stopping.wait()
        finally:
            await self._shut_down(elector, election, admissions, reports, probes, writer)

    async def _shut_down(
        self,
        elector: LeaseElector,
        election: asyncio.Task[None],
        admissions: AdmissionServer,
        reports: ReportServer,
        probes: ProbeServer,
        writer: AsyncApi,
    ) -> None:
        self.draining = True
        logger.info("shutting down: not ready; closing the API server's connections; handing the Lease over")
        admissions.drain()
        await elector.stop()  # the term (if any) ends first, then the Lease is released
        await _finish(election)
        delay = self.settings.shutdown_delay_seconds
        if delay:
            logger.info("answering admissions for %.0f s more while the endpoints drop this replica", delay)
            await asyncio.sleep(delay)
        for task in self._background:
            task.cancel()
            await _finish(task)
        await admissions.stop()
        await reports.stop()
        await probes.stop()
        for watch in self._watches:
            await asyncio.to_thread(watch.stop)
        await writer.close()
        logger.info("stopped")

    async def _wait_ca_trusted(self, api: Any, tls: ServingTLS, trusted: asyncio.Event) -> None:
        """Ready only once the API server can call this replica: on a fresh install no leader has
        written the caBundle yet, and until one has every review fails TLS and the pod is admitted
        without the sidecar (failurePolicy Ignore) — after `helm install --wait` had returned."""
        settings = self.settings
        if settings.webhook_manage == "none":  # someone else (cert-manager's cainjector) writes it
            trusted.set()
            return
        name = settings.webhook_configuration
        while True:
            try:
                trusts = await asyncio.to_thread(webhooks.carries_ca, api, name=name, ca_pem=tls.ca_pem)
            except Exception as exc:  # the API server unreachable for now: asked again below
                logger.debug("reading the webhook configuration %s: %s", name, exc)
                trusts = False
            if trusts:
                trusted.set()
                logger.info("webhook configuration %s trusts this replica's CA: ready", name)
                return
            await asyncio.sleep(0.5)

    async def _leadership(self, parts: Replica, leader: bool) -> None:
        """The elector's callback: a term starts in the background (the elector keeps renewing
        meanwhile); a term ends before the elector goes on (so it ends before the Lease is released)."""
        metrics.METRICS.set_leader(leader)
        if leader:
            term = Term(parts, on_signals=self.install_signals, on_kopf_exit=self._kopf_exited)
            self.term = term
            self._term_start = asyncio.get_running_loop().create_task(
                self._start(term), name="breakwater-term"
            )
            return
        ending, self.term = self.term, None
        if self._term_start is not None:
            self._term_start.cancel()
            await _finish(self._term_start)
            self._term_start = None
        if ending is not None:
            await ending.stop()
            logger.info("no longer leading: this replica writes nothing")

    async def _start(self, term: Term) -> None:
        try:
            await term.start()
        except asyncio.CancelledError:
            raise
        except Exception:
            logger.exception("could not start leading; shutting down so that another replica leads")
            self.stopping.set()

    async def _kopf_exited(self) -> None:
        self.stopping.set()

    def _on_report(self, report: SidecarReport, before: PodReport | None) -> None:
        """The leader's histories and trip tallies take every report (the others relay theirs to it)."""
        if self.term is not None:
            self.term.state.adaptive.ingest(report, now=time.time())
            self.term.refresher.trips.observe(report)
            mark_changed_policies(self.term.refresher, report, before)

    def _pods_changed(self, store: FleetStore, pods: PodIndex, namespace: str) -> None:
        term = self.term
        if term is not None:
            term.refresher.mark_namespace(namespace)
        for pod in [p for p in store.in_namespace(namespace) if pods.get(namespace, p) is None]:
            store.forget(namespace, pod)
            if term is not None:
                term.state.adaptive.forget_pod(namespace, pod)
                term.refresher.trips.forget_pod(namespace, pod)


async def _finish(task: asyncio.Task[Any]) -> None:
    with contextlib.suppress(asyncio.CancelledError, Exception):
        await task


def _labels(index: PodIndex, namespace: str, pod: str) -> Labels | None:
    found = index.get(namespace, pod)
    return found.labels if found is not None else None


async def _labels_from_api(api: Any, index: PodIndex, namespace: str, pod: str) -> Labels | None:
    """Before the pod index has listed every pod, a report from an unknown pod asks the API."""
    if index.synced.is_set():
        return None
    labels = await asyncio.to_thread(pod_api.labels, api, namespace=namespace, name=pod)
    return tuple(sorted(labels.items())) if labels is not None else None


def _signature(report: SidecarReport | PodReport) -> tuple[object, ...]:
    return (report.config_hash, tuple((u.policy, u.name, u.state, u.mode) for u in report.upstreams))


def mark_changed_policies(refresher: Refresher, report: SidecarReport, before: PodReport | None) -> None:
    """A report changes a status only when a breaker state or the config it runs changed: mark those
    policies; figures alone wait for the loop's sweep."""
    if before is None:
        refresher.mark_namespace(report.namespace)
        return
    if _signature(report) == _signature(before):
        return
    for policy in {u.policy for u in report.upstreams} | {u.policy for u in before.upstreams}:
        namespace, _, name = policy.partition("/")
        refresher.mark((namespace, name))
