"""The kopf handlers: policy reconcile and the sidecar-injection webhook; start-up of the pod watch, the
report channel and the status loop.

Importing this module registers the handlers with kopf's default registry (`kopf run -m` style).
Pods are not watched through kopf (it would keep whole pod bodies): `ListWatch` keeps a metadata-only
index. Status is not refreshed by kopf timers (one per policy per second): `Refresher` runs one loop.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import hmac
import logging
import ssl
from typing import Any, cast

import kopf

from breakwater.api import constants
from breakwater.api.bundle import PolicyBundle, bundle_key
from breakwater.api.constants import GROUP, PLURAL, VERSION
from breakwater.api.report import SidecarReport
from breakwater.controller import admission, memory, webhook
from breakwater.controller.fleet import PodReport
from breakwater.controller.pods import PodIndex
from breakwater.controller.pods import facts as pod_facts
from breakwater.controller.refresher import PolicyRecord, Refresher
from breakwater.controller.reports import FleetStore, ReportServer
from breakwater.controller.resolutions import Labels
from breakwater.controller.settings import OperatorSettings, report_url
from breakwater.controller.state import BundleCache, OperatorState, ReconcileOutcome
from breakwater.injection import pod as injection
from breakwater.injection.render import RenderError, render_bundle
from breakwater.k8s import configmaps, events
from breakwater.k8s import pods as pod_api
from breakwater.k8s.aio import AsyncApi
from breakwater.k8s.client import api_client
from breakwater.k8s.listwatch import POLICIES, ListWatch
from breakwater.k8s.webhooks import EXPECT_POLICY_ID, INJECT_SIDECAR_ID

logger = logging.getLogger(__name__)

POLICY = (GROUP, VERSION, PLURAL)
POLICY_SYNC_SECONDS = 30.0


def _settings(memo: Any) -> OperatorSettings:
    settings: OperatorSettings = memo["settings"]
    return settings


def _state(memo: Any) -> OperatorState:
    state: OperatorState = memo["state"]
    return state


def _refresher(memo: Any) -> Refresher:
    refresher: Refresher = memo["refresher"]
    return refresher


@kopf.on.startup()
async def configure(*, settings: kopf.OperatorSettings, memo: Any, **_: Any) -> None:
    ours = _settings(memo)
    settings.persistence.progress_storage = kopf.AnnotationsProgressStorage(prefix=GROUP)
    settings.persistence.diffbase_storage = kopf.AnnotationsDiffBaseStorage(
        prefix=GROUP, key="last-handled-configuration"
    )
    settings.persistence.finalizer = f"{GROUP}/finalizer"
    settings.posting.level = logging.WARNING  # Events for problems only; transitions post their own
    settings.watching.server_timeout = 300
    settings.networking.request_timeout = 30
    api = await asyncio.to_thread(api_client, ours.kubeconfig)
    state = OperatorState(api=api, bundles=BundleCache(api))
    memo["state"] = state
    served = await webhook.configure(settings, ours, api)
    state.ca_pem = served.ca_pem

    # The webhook's own view of the policies (controller/admission.py): listed before the webhook
    # serves (kopf starts its server once the startup handlers are done), so that an admission right
    # after start-up needs no LIST of its own.
    view = admission.PolicyView()
    policy_watch = ListWatch(api, view, admission.slim, resource=POLICIES, namespaces=ours.watch_namespaces)
    policy_watch.start(asyncio.get_running_loop())
    memo["policy_view"], memo["policy_watch"] = view, policy_watch

    index = PodIndex()
    watch = ListWatch(api, index, pod_facts, namespaces=ours.watch_namespaces)
    watch.start(asyncio.get_running_loop())
    memo["pod_watch"] = watch

    writer = AsyncApi(api)
    memo["writer"] = writer
    memo["policy_reads"] = admission.ConsistentReads(writer)
    store = FleetStore()
    key_pem = (served.cert_dir / "tls.key").read_bytes()
    server = ReportServer(
        api=api,
        bundles=state.bundles,
        store=store,
        pod_labels=lambda ns, pod: _labels(index, ns, pod),
        # Sessions survive an operator restart while the serving key stays the same.
        secret=hmac.digest(key_pem, b"breakwater report sessions", hashlib.sha256),
        admin_port=ours.sidecar_admin_port,
        proxy_port=ours.sidecar_proxy_port,
        resolve_labels=lambda ns, pod: _labels_from_api(state, index, ns, pod),
    )
    refresher = Refresher(
        state=state,
        store=store,
        resolutions=server.resolutions,
        pods_of=lambda ns: list(index.in_namespace(ns)),
        write_status=writer.patch_policy_status,
        stale_after=ours.stale_after_seconds,
        on_refresh=lambda record: _expire_override(record, state),
        post_event=lambda body, kind, reason, message: _post_event(writer, body, kind, reason, message),
    )
    memo["refresher"] = refresher
    server.on_report = lambda report, before: _on_report(refresher, report, before)
    index.listeners.append(lambda ns: _pods_changed(refresher, store, index, ns))
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(served.cert_dir / "tls.crt", served.cert_dir / "tls.key")
    await server.start(host=ours.report_listen_host, port=ours.report_listen_port, ssl_context=context)
    memo["report_server"] = server
    memo["background"] = [
        asyncio.create_task(refresher.run(), name="breakwater-status-loop"),
        asyncio.create_task(memory.trim_forever(), name="breakwater-memory-trim"),
    ]
    try:
        await asyncio.wait_for(view.synced.wait(), POLICY_SYNC_SECONDS)
    except TimeoutError:
        logger.warning(
            "policies not listed within %.0f s; admissions read them with a LIST until they are",
            POLICY_SYNC_SECONDS,
        )


@kopf.on.cleanup()
async def stop_background(*, memo: Any, **_: Any) -> None:
    tasks: list[asyncio.Task[None]] = memo.get("background") or []
    for task in tasks:
        task.cancel()
    for task in tasks:
        with contextlib.suppress(asyncio.CancelledError):
            await task
    server: ReportServer | None = memo.get("report_server")
    if server is not None:
        await server.stop()
    for key in ("pod_watch", "policy_watch"):
        watch: ListWatch[Any] | None = memo.get(key)
        if watch is not None:
            await asyncio.to_thread(watch.stop)
    writer: AsyncApi | None = memo.get("writer")
    if writer is not None:
        await writer.close()


async def _post_event(
    writer: AsyncApi, involved: dict[str, Any], kind: str, reason: str, message: str
) -> None:
    body = events.event_body(involved=involved, kind=kind, reason=reason, message=message)
    await writer.create_event(body["metadata"]["namespace"], body)


def _labels(index: PodIndex, namespace: str, pod: str) -> Labels | None:
    found = index.get(namespace, pod)
    return found.labels if found is not None else None


async def _labels_from_api(state: OperatorState, index: PodIndex, namespace: str, pod: str) -> Labels | None:
    """Before the pod index has listed every pod, a report from an unknown pod asks the API."""
    if index.synced.is_set():
        return None
    labels = await asyncio.to_thread(pod_api.labels, state.api, namespace=namespace, name=pod)
    return tuple(sorted(labels.items())) if labels is not None else None


def _signature(report: SidecarReport | PodReport) -> tuple[object, ...]:
    return (report.config_hash, tuple((u.policy, u.name, u.state, u.mode) for u in report.upstreams))


def _on_report(refresher: Refresher, report: SidecarReport, before: PodReport | None) -> None:
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


def _pods_changed(refresher: Refresher, store: FleetStore, index: PodIndex, namespace: str) -> None:
    refresher.mark_namespace(namespace)
    for pod in [p for p in store.in_namespace(namespace) if index.get(namespace, p) is None]:
        store.forget(namespace, pod)


# -- policies -----------------------------------------------------------------------------------


@kopf.on.resume(*POLICY)
@kopf.on.create(*POLICY)
@kopf.on.update(*POLICY)
async def reconcile_policy(
    *, body: kopf.Body, name: str, namespace: str | None, patch: kopf.Patch, memo: Any, **_: Any
) -> None:
    namespace = namespace or ""
    await _render_and_publish(body, name, namespace, _state(memo))
    refresher = _refresher(memo)
    refresher.track(body)
    await refresher.refresh((namespace, name))  # Accepted is on the resource when the handler ends


async def _render_and_publish(
    body: kopf.Body | dict[str, Any], name: str, namespace: str, state: OperatorState
) -> None:
    generation = int((body.get("metadata") or {}).get("generation") or 0)
    try:
        bundle = render_bundle(body)
    except RenderError as exc:
        # Keep the last good bundle: a sidecar keeps enforcing what it had rather than nothing.
        reason = type(exc).__name__  # InvalidSpec or InvalidSidecarConfig
        outcome = ReconcileOutcome(generation, False, reason, str(exc))
        state.outcomes[(namespace, name)] = outcome
        kopf.warn(cast(kopf.Body, body), reason=reason, message=str(exc))
        logger.warning("policy %s/%s not accepted: %s", namespace, name, exc)
    else:
        written = await asyncio.to_thread(
            configmaps.put_key,
            state.api,
            namespace=namespace,
            name=constants.CONFIGMAP_NAME,
            key=bundle_key(name),
            value=bundle.to_json(),
        )
        if not written:
            return  # the namespace is being deleted, the policy with it
        state.bundles.put(namespace, bundle)
        upstreams = ", ".join(u.name for u in bundle.upstreams)
        outcome = ReconcileOutcome(generation, True, "Rendered", f"sidecar config rendered for {upstreams}")
        state.outcomes[(namespace, name)] = outcome
        logger.info("policy %s/%s generation %s rendered (%s)", namespace, name, generation, upstreams)


async def _expire_override(record: PolicyRecord, state: OperatorState) -> None:
    """Re-render a policy whose override may have started or ended: time, not an edit, changed it."""
    body = record.body
    namespace, name = str(body["metadata"].get("namespace") or ""), str(body["metadata"]["name"])
    if not (body.get("spec") or {}).get("override"):
        return
    cached = (await state.bundles.get(namespace)).get(name)
    try:
        fresh = render_bundle(body)
    except RenderError:
        return
    if cached is not None and [u.mode for u in cached.upstreams] != [u.mode for u in fresh.upstreams]:
        logger.info(
            "policy %s/%s: the override's time window changed the mode; re-rendering", namespace, name
        )
        await _render_and_publish(body, name, namespace, state)


@kopf.on.delete(*POLICY)
async def remove_policy(*, name: str, namespace: str | None, memo: Any, **_: Any) -> None:
    namespace = namespace or ""
    state = _state(memo)
    await asyncio.to_thread(
        configmaps.remove_key,
        state.api,
        namespace=namespace,
        name=constants.CONFIGMAP_NAME,
        key=bundle_key(name),
    )
    state.bundles.remove(namespace, name)
    state.outcomes.pop((namespace, name), None)
    _refresher(memo).forget((namespace, name))
    logger.info(
        "policy %s/%s deleted: its config is removed, its sidecars pass traffic through", namespace, name
    )


# -- the webhook --------------------------------------------------------------------------------


@kopf.on.mutate(*POLICY, operations=["CREATE"], id=EXPECT_POLICY_ID)
async def expect_policy(*, body: kopf.Body, memo: Any, dryrun: bool, **_: Any) -> None:
    """A policy is being created: note its name so the pods admitted once it is persisted find it
    (controller/admission.py). Never changes or refuses the policy."""
    if dryrun:
        return
    try:
        _view(memo).expect(body.metadata.namespace or "", body.metadata.name or "")
    except Exception:
        logger.exception("could not note a policy being created in %s", body.metadata.namespace)


@kopf.on.mutate("pods", operations=["CREATE"], id=INJECT_SIDECAR_ID)
async def inject_sidecar(
    *, body: kopf.Body, patch: kopf.Patch, memo: Any, warnings: list[str], **_: Any
) -> None:
    """Add the sidecar to a pod that a policy selects. Never fails the admission: a pod is always created."""
    try:
        await _inject(body, patch, memo)
    except Exception:
        logger.exception("injection failed for a pod of %s; admitting it unchanged", body.metadata.namespace)
        warnings.append("breakwater: sidecar injection failed; the pod runs unprotected (see operator logs)")


ADMISSION_READ_SECONDS = 2.0  # within the webhook's 5 s: past it, what the operator knows decides


def _view(memo: Any) -> admission.PolicyView:
    view: admission.PolicyView = memo["policy_view"]
    return view


async def _admission_bundles(
    state: OperatorState, view: admission.PolicyView, api: admission.PolicyReader, namespace: str
) -> dict[str, PolicyBundle]:
    """The namespace's bundles as the API holds its policies now (see controller/admission.py)."""
    cached = asyncio.ensure_future(state.bundles.get(namespace))
    listed = await admission.read_policies(view, api, namespace, deadline=ADMISSION_READ_SECONDS)
    return admission.consistent_bundles(listed, await cached)


async def _inject(body: kopf.Body, patch: kopf.Patch, memo: Any) -> None:
    settings, state = _settings(memo), _state(memo)
    namespace = body.metadata.namespace or ""
    pod = dict(body)
    reason = injection.skip_reason(pod, namespace, operator_namespace=settings.operator_namespace)
    if reason:
        logger.debug("not injecting a pod of %s: %s", namespace, reason)
        return
    if settings.watch_namespaces and namespace not in settings.watch_namespaces:
        return
    bundles = await _admission_bundles(state, _view(memo), memo["policy_reads"], namespace)
    decision = admission.decide(
        pod, bundles.values(), admin_port=settings.sidecar_admin_port, proxy_port=settings.sidecar_proxy_port
    )
    pod_name = body.metadata.name or body.metadata.get("generateName", "?")
    if decision is None:
        return
    if isinstance(decision, admission.Skip):
        note = f"{decision.reason}: {decision.detail}"
        patch.metadata.annotations[constants.ANNOTATION_NOT_INJECTED] = note
        logger.warning("not injecting %s/%s: %s (%s)", namespace, pod_name, decision.reason, decision.detail)
        return
    resolution = decision.resolution
    plan = injection.InjectionPlan(
        policies=resolution.policies,
        listen_ports=resolution.listen_ports,
        transparent=resolution.transparent,
        config_hash=resolution.config_hash,
    )
    template = injection.SidecarTemplate(
        image=settings.sidecar_image,
        image_pull_policy=settings.sidecar_image_pull_policy,
        resources=settings.sidecar_resources,
        admin_port=settings.sidecar_admin_port,
        proxy_port=settings.sidecar_proxy_port,
        report_url=report_url(settings),
        report_ca=state.ca_pem.decode(),
    )
    patch.fns.append(lambda b: injection.inject(cast(dict[str, Any], b), template=template, plan=plan))
    logger.info(
        "injecting the sidecar into %s/%s (policies %s, config %s)",
        namespace,
        pod_name,
        ",".join(resolution.policies),
        resolution.config_hash,
    )
