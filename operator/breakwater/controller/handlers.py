"""The kopf handlers: policy reconcile, the pod index, the sidecar-injection webhook, status refresh.

Importing this module registers the handlers with kopf's default registry (`kopf run -m` style).
"""

from __future__ import annotations

import asyncio
import logging
import ssl
import time
from typing import Any, cast

import kopf

from breakwater.api.bundle import PolicyBundle, bundle_key
from breakwater.api.constants import GROUP, PLURAL, VERSION
from breakwater.controller import pods as pod_facts
from breakwater.controller import webhook
from breakwater.controller.fleet import TransitionClock
from breakwater.controller.reports import FleetStore, ReportServer
from breakwater.controller.settings import OperatorSettings, report_url
from breakwater.controller.state import BundleCache, OperatorState, ReconcileOutcome
from breakwater.controller.status import desired_status, fleet_view, significant, view_pods, without_times
from breakwater.injection import pod as injection
from breakwater.injection.render import RenderError, render_bundle
from breakwater.injection.resolve import resolve
from breakwater.k8s import configmaps
from breakwater.k8s import pods as pod_api
from breakwater.k8s.client import api_client

logger = logging.getLogger("breakwater.controller")

POLICY = (GROUP, VERSION, PLURAL)


def _settings(memo: Any) -> OperatorSettings:
    settings: OperatorSettings = memo["settings"]
    return settings


def _state(memo: Any) -> OperatorState:
    state: OperatorState = memo["state"]
    return state


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
    store = FleetStore()
    memo["fleet"] = store
    server = ReportServer(
        api=api,
        bundles=state.bundles,
        store=store,
        pod_labels=lambda ns, pod: _pod_labels(state, ns, pod),
        admin_port=ours.sidecar_admin_port,
        proxy_port=ours.sidecar_proxy_port,
    )
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(served.cert_dir / "tls.crt", served.cert_dir / "tls.key")
    await server.start(host=ours.report_listen_host, port=ours.report_listen_port, ssl_context=context)
    memo["report_server"] = server


@kopf.on.cleanup()
async def stop_report_server(*, memo: Any, **_: Any) -> None:
    server: ReportServer | None = memo.get("report_server")
    if server is not None:
        await server.stop()


async def _pod_labels(state: OperatorState, namespace: str, pod: str) -> dict[str, str] | None:
    """A pod's labels from kopf's pod index, or from the API while the index is not captured yet."""
    if state.pod_index is not None:
        for facts in state.pod_index.get(namespace, []):
            if facts.name == pod:
                found: dict[str, str] = facts.label_map
                return found
        return None
    return await asyncio.to_thread(pod_api.labels, state.api, namespace=namespace, name=pod)


# -- policies -----------------------------------------------------------------------------------


@kopf.on.resume(*POLICY)
@kopf.on.create(*POLICY)
@kopf.on.update(*POLICY)
async def reconcile_policy(
    *, body: kopf.Body, name: str, namespace: str | None, patch: kopf.Patch, memo: Any, **_: Any
) -> None:
    namespace = namespace or ""
    await _render_and_publish(body, name, namespace, _state(memo))
    await _refresh(body=body, name=name, namespace=namespace, patch=patch, memo=memo)


async def _render_and_publish(body: kopf.Body, name: str, namespace: str, state: OperatorState) -> None:
    generation = int(body.metadata.get("generation") or 0)
    try:
        bundle = render_bundle(body)
    except RenderError as exc:
        # Keep the last good bundle: a sidecar keeps enforcing what it had rather than nothing.
        outcome = ReconcileOutcome(generation, False, exc.reason, str(exc))
        state.outcomes[(namespace, name)] = outcome
        kopf.warn(body, reason=exc.reason, message=str(exc))
        logger.warning("policy %s/%s not accepted: %s", namespace, name, exc)
    else:
        await asyncio.to_thread(
            configmaps.put_key,
            state.api,
            namespace=namespace,
            name=injection.CONFIGMAP_NAME,
            key=bundle_key(name),
            value=bundle.to_json(),
        )
        state.bundles.put(namespace, bundle)
        upstreams = ", ".join(u.name for u in bundle.upstreams)
        outcome = ReconcileOutcome(generation, True, "Rendered", f"sidecar config rendered for {upstreams}")
        state.outcomes[(namespace, name)] = outcome
        logger.info("policy %s/%s generation %s rendered (%s)", namespace, name, generation, upstreams)


async def _expire_override(body: kopf.Body, name: str, namespace: str, state: OperatorState) -> None:
    """Re-render a policy whose override may have started or ended: time, not an edit, changed it."""
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
        name=injection.CONFIGMAP_NAME,
        key=bundle_key(name),
    )
    state.bundles.remove(namespace, name)
    state.outcomes.pop((namespace, name), None)
    logger.info(
        "policy %s/%s deleted: its config is removed, its sidecars pass traffic through", namespace, name
    )


# -- pods ---------------------------------------------------------------------------------------


@kopf.index("pods")
def pods_by_namespace(
    *, body: kopf.Body, namespace: str | None, **_: Any
) -> dict[str, pod_facts.PodFacts] | None:
    found = pod_facts.facts(body)
    return None if found is None or not namespace else {namespace: found}


# -- status -------------------------------------------------------------------------------------


async def _refresh(
    *,
    body: kopf.Body,
    name: str,
    namespace: str,
    patch: kopf.Patch,
    memo: Any,
    pods: list[pod_facts.PodFacts] | None = None,
) -> None:
    settings, state = _settings(memo), _state(memo)
    store: FleetStore = memo["fleet"]
    bundles = await state.bundles.get(namespace)
    bundle: PolicyBundle | None = bundles.get(name)
    policy_id = f"{namespace}/{name}"
    view = view_pods(policy_id, bundle, pods or [], bundles)
    grace = time.monotonic() - state.started_at < settings.stale_after_seconds / 2
    fleet = fleet_view(
        policy_id,
        bundle,
        view,
        bundles,
        store.in_namespace(namespace),
        stale_after=settings.stale_after_seconds,
        grace=grace,
    )
    clock = state.clocks.setdefault((namespace, name), TransitionClock())
    previous = dict(body.get("status") or {})
    wanted = desired_status(
        generation=int(body.metadata.get("generation") or 0),
        previous=previous,
        outcome=state.outcomes.get((namespace, name)),
        bundle=bundle,
        view=view,
        fleet=fleet,
        clock=clock,
        mode=bundle.upstreams[0].mode if bundle and bundle.upstreams else None,
    )
    comparable_previous = {k: previous.get(k) for k in wanted}
    if without_times(wanted) == without_times(comparable_previous):
        return
    key = (namespace, name)
    # State changes are written at once; figures alone (failure rate, trips) at most every 10 s.
    if (
        significant(wanted) == significant(comparable_previous)
        and time.monotonic() - state.last_write.get(key, 0) < 10
    ):
        return
    state.last_write[key] = time.monotonic()
    for field_name, value in wanted.items():
        old = previous.get(field_name)
        if isinstance(value, dict) and isinstance(old, dict):
            # A merge patch keeps keys it does not name: null the ones that went away (summary.message
            # once every breaker closed), or the status keeps them and is rewritten every second.
            value = {**dict.fromkeys((k for k in old if k not in value), None), **value}
        patch.status[field_name] = value
    _post_transition_events(body, state, namespace, name, previous, wanted)


def _post_transition_events(
    body: kopf.Body,
    state: OperatorState,
    namespace: str,
    name: str,
    previous: dict[str, Any],
    wanted: dict[str, Any],
) -> None:
    before = {u.get("name"): u for u in previous.get("upstreams") or ()}
    for upstream in wanted.get("upstreams") or ():
        old_state = str((before.get(upstream["name"]) or {}).get("state", "Unknown"))
        new_state = str(upstream["state"])
        if old_state == new_state or "Unknown" in (old_state, new_state):
            continue
        admitted, skipped = state.events.admit((namespace, name, upstream["name"]))
        if not admitted:
            continue
        total = upstream["open"] + upstream["halfOpen"] + upstream["closed"]
        message = (
            f"upstream {upstream['name']}: {old_state} -> {new_state} "
            f"(open on {upstream['open']}/{total} pods, half-open on {upstream['halfOpen']})"
        )
        if skipped:
            message += f"; {skipped} earlier transitions not shown (a flapping upstream is rate-limited)"
        kind = "Normal" if new_state == "Closed" else "Warning"
        kopf.event(body, type=kind, reason=f"Upstream{new_state}", message=message)
        logger.info("policy %s/%s: %s", namespace, name, message)


@kopf.timer(*POLICY, interval=1.0, id="refresh-status")
async def refresh_status(
    *, body: kopf.Body, name: str, namespace: str | None, patch: kopf.Patch, memo: Any, **kwargs: Any
) -> None:
    namespace = namespace or ""
    index: kopf.Index[str, pod_facts.PodFacts] = kwargs["pods_by_namespace"]
    _state(memo).pod_index = index
    pods = list(index.get(namespace, []))
    await _expire_override(body, name, namespace, _state(memo))
    await _refresh(body=body, name=name, namespace=namespace, patch=patch, memo=memo, pods=pods)


# -- the webhook --------------------------------------------------------------------------------


@kopf.on.mutate("pods", operations=["CREATE"], id="inject-sidecar")
async def inject_sidecar(
    *, body: kopf.Body, patch: kopf.Patch, memo: Any, warnings: list[str], **_: Any
) -> None:
    """Add the sidecar to a pod that a policy selects. Never fails the admission: a pod is always created."""
    try:
        await _inject(body, patch, memo)
    except Exception:
        logger.exception("injection failed for a pod of %s; admitting it unchanged", body.metadata.namespace)
        warnings.append("breakwater: sidecar injection failed; the pod runs unprotected (see operator logs)")


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
    bundles = await state.bundles.get(namespace)
    labels = dict(body.metadata.labels or {})
    resolution = resolve(
        labels,
        bundles.values(),
        admin_port=settings.sidecar_admin_port,
        proxy_port=settings.sidecar_proxy_port,
    )
    if not resolution.policies:
        return
    taken = injection.listen_ports_in_use(pod)
    clashing = [port for _, port in resolution.listen_ports if port in taken]
    if clashing:
        logger.warning("not injecting a pod of %s: the app already uses listen ports %s", namespace, clashing)
        return
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
        body.metadata.name or body.metadata.get("generateName", "?"),
        ",".join(resolution.policies),
        resolution.config_hash,
    )
