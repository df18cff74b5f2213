"""The kopf handlers: policy reconcile, the pod index, the sidecar-injection webhook, status refresh.

Importing this module registers the handlers with kopf's default registry (`kopf run -m` style).
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any, cast

import kopf

from breakwater.api.bundle import PolicyBundle, bundle_key
from breakwater.api.constants import GROUP, PLURAL, VERSION
from breakwater.controller import pods as pod_facts
from breakwater.controller import webhook
from breakwater.controller.settings import OperatorSettings
from breakwater.controller.state import BundleCache, OperatorState, ReconcileOutcome
from breakwater.controller.status import desired_status, view_pods, without_times
from breakwater.injection import pod as injection
from breakwater.injection.render import RenderError, render_bundle
from breakwater.injection.resolve import resolve
from breakwater.k8s import configmaps
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
    memo["state"] = OperatorState(api=api, bundles=BundleCache(api))
    await webhook.configure(settings, ours, api)


# -- policies -----------------------------------------------------------------------------------


@kopf.on.resume(*POLICY)
@kopf.on.create(*POLICY)
@kopf.on.update(*POLICY)
async def reconcile_policy(
    *, body: kopf.Body, name: str, namespace: str | None, patch: kopf.Patch, memo: Any, **_: Any
) -> None:
    namespace = namespace or ""
    state = _state(memo)
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
    await _refresh(body=body, name=name, namespace=namespace, patch=patch, memo=memo)


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
    memo: kopf.Memo,
    pods: list[pod_facts.PodFacts] | None = None,
) -> None:
    state = _state(memo)
    bundles = await state.bundles.get(namespace)
    bundle: PolicyBundle | None = bundles.get(name)
    view = view_pods(f"{namespace}/{name}", bundle, pods or [], bundles)
    previous = dict(body.get("status") or {})
    wanted = desired_status(
        generation=int(body.metadata.get("generation") or 0),
        previous=previous,
        outcome=state.outcomes.get((namespace, name)),
        bundle=bundle,
        view=view,
    )
    comparable_previous = {k: previous.get(k) for k in wanted}
    if without_times(wanted) != without_times(comparable_previous):
        for key, value in wanted.items():
            patch.status[key] = value


@kopf.timer(*POLICY, interval=1.0, id="refresh-status")
async def refresh_status(
    *, body: kopf.Body, name: str, namespace: str | None, patch: kopf.Patch, memo: Any, **kwargs: Any
) -> None:
    namespace = namespace or ""
    index: kopf.Index[str, pod_facts.PodFacts] = kwargs["pods_by_namespace"]
    pods = list(index.get(namespace, []))
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
        report_url=settings.report_url,
    )
    patch.fns.append(lambda b: injection.inject(cast(dict[str, Any], b), template=template, plan=plan))
    logger.info(
        "injecting the sidecar into %s/%s (policies %s, config %s)",
        namespace,
        body.metadata.name or body.metadata.get("generateName", "?"),
        ",".join(resolution.policies),
        resolution.config_hash,
    )
