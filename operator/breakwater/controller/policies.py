"""The policy handlers, run by kopf on the leader only: render each policy's bundle into its namespace's
ConfigMap (with the thresholds the tuner chose and the quorum holds, `controller.adaptive`), track it
for the status loop, remove the bundle and the policy's history when the policy is deleted.

kopf writes on every policy it handles (a finalizer, its progress and last-handled annotations), so it
runs only while this replica holds the Lease (`controller.leadership`), with its own registry: importing
this module registers nothing anywhere else.
"""

from __future__ import annotations

import asyncio
import datetime
import logging
from dataclasses import dataclass
from typing import Any, cast

import kopf

from breakwater.api import constants
from breakwater.api.bundle import bundle_key
from breakwater.api.constants import GROUP, PLURAL, VERSION
from breakwater.api.coordination import inert_coordination
from breakwater.controller import metrics
from breakwater.controller.adaptive import Adaptation
from breakwater.controller.refresher import PolicyRecord, Refresher
from breakwater.controller.state import OperatorState, ReconcileOutcome
from breakwater.injection.render import RenderError, render_bundle
from breakwater.k8s import configmaps

logger = logging.getLogger(__name__)

POLICY = (GROUP, VERSION, PLURAL)
REGISTRY = kopf.OperatorRegistry()


@dataclass
class TermMemo:
    """What the handlers of one leadership term share (kopf's memo)."""

    state: OperatorState
    refresher: Refresher


def kopf_settings() -> kopf.OperatorSettings:
    settings = kopf.OperatorSettings()
    settings.persistence.progress_storage = kopf.AnnotationsProgressStorage(prefix=GROUP)
    settings.persistence.diffbase_storage = kopf.AnnotationsDiffBaseStorage(
        prefix=GROUP, key="last-handled-configuration"
    )
    settings.persistence.finalizer = f"{GROUP}/finalizer"
    settings.posting.level = logging.WARNING  # Events for problems only; transitions post their own
    settings.watching.server_timeout = 300
    settings.networking.request_timeout = 30
    settings.peering.standalone = True  # the Lease decides who runs kopf (controller.leadership)
    return settings


def _term(memo: Any) -> TermMemo:
    term: TermMemo = memo["term"]
    return term


@kopf.on.login(registry=REGISTRY)
def login(*, memo: Any, settings: kopf.OperatorSettings, **_: Any) -> kopf.ConnectionInfo:
    """kopf connects with the replica's own configuration (the `--kubeconfig` given, or the in-cluster
    ServiceAccount), asked again at every login so a rotated token is picked up; an exec plugin's
    token carries its expiry, so kopf logs in again before it runs out."""
    config = _term(memo).state.api.configuration
    token = config.bearer_token()
    basic = not token and config.username is not None
    plugin = config.exec_plugin
    return kopf.ConnectionInfo(
        server=config.host,
        ca_path=config.ca_file,
        ca_data=None if config.ca_file else config.ca_data,
        insecure=config.insecure,
        username=config.username if basic else None,
        password=config.password if basic else None,
        scheme="Bearer" if token else None,
        token=token or None,
        certificate_path=config.cert_file,
        certificate_data=None if config.cert_file else config.cert_data,
        private_key_path=config.key_file,
        private_key_data=None if config.key_file else config.key_data,
        default_namespace=config.namespace,
        expiration=plugin.expires if plugin is not None else None,
        trust_env=settings.networking.trust_env,
    )


@kopf.on.resume(*POLICY, registry=REGISTRY)
@kopf.on.create(*POLICY, registry=REGISTRY)
@kopf.on.update(*POLICY, registry=REGISTRY)
async def reconcile_policy(*, body: kopf.Body, name: str, namespace: str | None, memo: Any, **_: Any) -> None:
    namespace = namespace or ""
    term = _term(memo)
    try:
        await render_and_publish(body, name, namespace, term.state, applied=True)
    except Exception:
        metrics.METRICS.reconciled("error")
        raise
    term.refresher.track(body)
    await term.refresher.refresh((namespace, name))  # Accepted is on the resource when the handler ends


async def render_and_publish(
    body: kopf.Body | dict[str, Any],
    name: str,
    namespace: str,
    state: OperatorState,
    *,
    applied: bool = False,
) -> None:
    """Render and write the policy's bundle, with the thresholds the tuner chose and the quorum holds;
    `applied`: a generation is being applied (a reconcile, whose body carries the stored status), not
    re-rendered because time or the tuner moved."""
    generation = int((body.get("metadata") or {}).get("generation") or 0)
    policy = f"{namespace}/{name}"
    adaptation: Adaptation = state.adaptive
    await adaptation.load(namespace)  # a new leader renders what the last one tuned, not the spec's
    adaptation.configure(policy, dict(body))
    try:
        bundle = render_bundle(
            body,
            tuned=adaptation.tuned(policy),
            held=adaptation.held(policy),
            sidecar_ports=state.sidecar_ports,
        )
    except RenderError as exc:
        # Keep the last good bundle: a sidecar keeps enforcing what it had rather than nothing.
        reason = type(exc).__name__  # InvalidSpec, InvalidSidecarConfig or ReservedListenPort
        outcome = ReconcileOutcome(generation, False, reason, str(exc))
        state.outcomes[(namespace, name)] = outcome
        kopf.warn(cast(kopf.Body, body), reason=reason, message=str(exc))
        metrics.METRICS.reconciled("invalid")
        logger.warning(
            "policy %s/%s not accepted: %s", namespace, name, exc,
            extra={"fields": {"namespace": namespace, "policy": name, "reason": reason}},
        )  # fmt: skip
        return
    upstreams = ", ".join(u.name for u in bundle.upstreams)
    inert = inert_coordination(body.get("spec") or {})
    rendered = "; ".join([f"sidecar config rendered for {upstreams}", *inert])
    outcome = ReconcileOutcome(generation, True, "Rendered", rendered)
    if applied:
        check_override(body, name, namespace, generation, state)
        for message in inert:  # valid, but does nothing: say so where `kubectl describe` shows it
            kopf.warn(cast(kopf.Body, body), reason="InertSetting", message=message)
            logger.warning(
                "policy %s/%s: %s", namespace, name, message,
                extra={"fields": {"namespace": namespace, "policy": name, "reason": "InertSetting"}},
            )  # fmt: skip
    if (await state.bundles.get(namespace)).get(name) == bundle:
        # Already in the ConfigMap (a new leader resuming every policy): nothing to write.
        state.outcomes[(namespace, name)] = outcome
        metrics.METRICS.reconciled("accepted")
        return
    written = await asyncio.to_thread(
        configmaps.put_key,
        state.api,
        namespace=namespace,
        name=constants.CONFIGMAP_NAME,
        key=bundle_key(name),
        value=bundle.to_json(),
    )
    if not written:
        metrics.METRICS.reconciled("skipped")
        return  # the namespace is being deleted, the policy with it
    state.bundles.put(namespace, bundle)
    state.outcomes[(namespace, name)] = outcome
    metrics.METRICS.reconciled("accepted")
    logger.info(
        "policy %s/%s generation %s rendered (%s)", namespace, name, generation, upstreams,
        extra={"fields": {"namespace": namespace, "policy": name, "generation": generation}},
    )  # fmt: skip


def check_override(
    body: kopf.Body | dict[str, Any], name: str, namespace: str, generation: int, state: OperatorState
) -> None:
    """An override whose `until` had passed when its generation was applied does nothing: say so once
    (a condition, and a Warning Event), not silently."""
    key = (namespace, name)
    until = ((body.get("spec") or {}).get("override") or {}).get("until")
    if not until or state.expired_on_arrival.get(key) == generation:
        return
    ended = datetime.datetime.fromisoformat(str(until).replace("Z", "+00:00"))
    if ended > datetime.datetime.now(datetime.UTC):
        return
    told = next(
        (
            c
            for c in (body.get("status") or {}).get("conditions") or ()
            if c.get("type") == constants.CONDITION_OVERRIDE_EXPIRED
            and c.get("observedGeneration") == generation
        ),
        None,
    )
    if told is not None:  # a restart or a new leader re-applies the generation: keep what was said then
        if told.get("reason") == "ExpiredWhenApplied":
            state.expired_on_arrival[key] = generation
        return
    state.expired_on_arrival[key] = generation
    message = f"spec.override.until {until} has already passed: the override does nothing"
    kopf.warn(cast(kopf.Body, body), reason="OverrideExpired", message=message)
    logger.warning(
        "policy %s/%s: %s", namespace, name, message,
        extra={"fields": {"namespace": namespace, "policy": name, "reason": "OverrideExpired"}},
    )  # fmt: skip


async def republish(record: PolicyRecord, state: OperatorState) -> None:
    """Render and publish a policy again: the tuner changed its thresholds, or a quorum hold changed."""
    meta = record.body["metadata"]
    await render_and_publish(record.body, str(meta["name"]), str(meta.get("namespace") or ""), state)


async def expire_override(record: PolicyRecord, state: OperatorState) -> None:
    """Re-render a policy whose override may have started or ended: time, not an edit, changed it."""
    body = record.body
    namespace, name = str(body["metadata"].get("namespace") or ""), str(body["metadata"]["name"])
    if not (body.get("spec") or {}).get("override"):
        return
    cached = (await state.bundles.get(namespace)).get(name)
    try:
        fresh = render_bundle(body)  # the modes only are compared
    except RenderError:
        return
    if cached is not None and [u.mode for u in cached.upstreams] != [u.mode for u in fresh.upstreams]:
        logger.info(
            "policy %s/%s: the override's time window changed the mode; re-rendering", namespace, name
        )
        await render_and_publish(body, name, namespace, state)


@kopf.on.delete(*POLICY, registry=REGISTRY)
async def remove_policy(*, name: str, namespace: str | None, memo: Any, **_: Any) -> None:
    namespace = namespace or ""
    term = _term(memo)
    await asyncio.to_thread(
        configmaps.remove_key,
        term.state.api,
        namespace=namespace,
        name=constants.CONFIGMAP_NAME,
        key=bundle_key(name),
    )
    term.state.bundles.remove(namespace, name)
    term.state.outcomes.pop((namespace, name), None)
    term.state.expired_on_arrival.pop((namespace, name), None)
    await term.state.adaptive.remove(f"{namespace}/{name}")
    term.refresher.forget((namespace, name))
    metrics.METRICS.reconciled("deleted")
    logger.info(
        "policy %s/%s deleted: its config is removed, its sidecars pass traffic through", namespace, name
    )
