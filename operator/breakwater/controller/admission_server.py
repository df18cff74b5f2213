"""The admission webhooks, served over HTTPS by every replica: sidecar injection and policy CREATEs.

Not kopf's webhook server: kopf runs on the leader only (it writes finalizers and its progress
annotations), while every replica must answer the API server. The answers never refuse anything:
an error admits the pod unchanged, with a warning, so a broken operator never blocks pod creation.

    POST /inject-sidecar    pods CREATE: a JSON patch that adds the sidecar, or nothing
    POST /expect-policy     circuitbreakerpolicies CREATE: note the name (controller/admission.py)
"""

from __future__ import annotations

import asyncio
import base64
import copy
import json
import logging
import ssl
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from aiohttp import web

from breakwater.api import constants
from breakwater.api.bundle import PolicyBundle
from breakwater.controller import admission, metrics
from breakwater.controller.settings import OperatorSettings, report_url
from breakwater.controller.state import BundleCache
from breakwater.injection import pod as injection
from breakwater.injection.render import render_bundle
from breakwater.k8s.webhooks import EXPECT_POLICY_ID, INJECT_SIDECAR_ID

logger = logging.getLogger(__name__)

ADMISSION_READ_SECONDS = 2.0  # within the webhook's 5 s: past it, what the operator knows decides
MAX_REVIEW_BYTES = 3 * 1024 * 1024  # a pod spec is at most ~1.5 MiB in etcd; the review wraps it


@dataclass
class AdmissionAnswer:
    """What one admission review is answered with."""

    patch: list[dict[str, Any]]
    warnings: list[str]


def review_response(review: dict[str, Any], answer: AdmissionAnswer) -> dict[str, Any]:
    response: dict[str, Any] = {"uid": (review.get("request") or {}).get("uid", ""), "allowed": True}
    if answer.patch:
        response["patchType"] = "JSONPatch"
        response["patch"] = base64.b64encode(json.dumps(answer.patch).encode()).decode()
    if answer.warnings:
        response["warnings"] = answer.warnings
    return {"apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview", "response": response}


def patch_of(before: dict[str, Any], after: dict[str, Any]) -> list[dict[str, Any]]:
    """A JSON patch from `before` to `after` for the parts injection changes: each changed list or map
    under /spec and /metadata is set whole (`add` replaces an existing member, RFC 6902)."""
    ops = []
    for section in ("metadata", "spec"):
        old, new = before.get(section) or {}, after.get(section) or {}
        for key in sorted(new):
            if old.get(key) != new[key]:
                ops.append({"op": "add", "path": f"/{section}/{key}", "value": new[key]})
    return ops


@dataclass
class AdmissionServer:
    settings: OperatorSettings
    view: admission.PolicyView
    reads: admission.PolicyReader
    bundles: BundleCache
    ca_pem: Callable[[], bytes]  # the report endpoint's CA, which injected sidecars trust
    _runner: web.AppRunner | None = None
    port: int = 0
    draining: bool = False

    def app(self) -> web.Application:
        app = web.Application(client_max_size=MAX_REVIEW_BYTES)
        app.router.add_post(f"/{INJECT_SIDECAR_ID}", self._handle(self.admit_pod))
        app.router.add_post(f"/{EXPECT_POLICY_ID}", self._handle(self.expect_policy))
        return app

    async def start(self, *, host: str, port: int, ssl_context: ssl.SSLContext | None) -> None:
        self._runner = web.AppRunner(self.app(), access_log=None, handle_signals=False)
        await self._runner.setup()
        site = web.TCPSite(self._runner, host, port, ssl_context=ssl_context, reuse_address=True)
        await site.start()
        self.port = port
        logger.info("admission webhooks listening on %s:%s", host, port)

    def drain(self) -> None:
        """Close the API server's keep-alive connections: the idle ones now, the busy ones after their
        answer, which says `Connection: close` (as every answer from now on does).

        The API server keeps its connections to a replica whatever the endpoints say (kube-proxy only
        routes new ones), so a stopping replica that closed them only when it stops cut reviews in
        flight, each one a pod admitted without the sidecar (failurePolicy Ignore). Closed at the start
        of the shutdown delay, the API server's next reviews open new connections, to the replicas
        that stay."""
        self.draining = True
        if self._runner is None or self._runner.server is None:
            return
        for connection in self._runner.server.connections:
            # Idle: waiting for the next request, as aiohttp's own keep-alive expiry tells it (its
            # `close()` would leave the socket open and drop the next request unanswered).
            waiting = getattr(connection, "_waiter", None)
            if waiting is not None and not waiting.done():
                connection.force_close()

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    @property
    def serving(self) -> bool:
        return self._runner is not None

    def _handle(self, admit: Callable[[dict[str, Any]], Any]) -> Callable[[web.Request], Any]:
        async def handle(request: web.Request) -> web.Response:
            try:
                review = await request.json()
            except (ValueError, UnicodeDecodeError):
                return web.Response(status=400, text="not an AdmissionReview\n")
            if not isinstance(review, dict) or not isinstance(review.get("request"), dict):
                return web.Response(status=400, text="not an AdmissionReview\n")
            try:
                answer = await admit(review["request"])
            except Exception:
                namespace = review["request"].get("namespace", "?")
                logger.exception("admission failed for an object of %s; admitting it unchanged", namespace)
                answer = AdmissionAnswer(
                    [], ["breakwater: sidecar injection failed; the pod runs unprotected"]
                )
            response = web.json_response(review_response(review, answer))
            if self.draining:
                response.force_close()
            return response

        return handle

    async def expect_policy(self, request: dict[str, Any]) -> AdmissionAnswer:
        if not request.get("dryRun"):
            meta = (request.get("object") or {}).get("metadata") or {}
            self.view.expect(str(request.get("namespace") or ""), str(meta.get("name") or ""))
        return AdmissionAnswer([], [])

    async def admit_pod(self, request: dict[str, Any]) -> AdmissionAnswer:
        """The answer to a pod CREATE, counted and timed by its outcome (metrics.ADMISSION_OUTCOMES)."""
        started = time.perf_counter()
        try:
            outcome, answer = await self._admit_pod(request)
        except Exception:
            metrics.METRICS.admitted("error", time.perf_counter() - started)
            raise  # answered by _handle: admitted unchanged, with a warning
        metrics.METRICS.admitted(outcome, time.perf_counter() - started)
        return answer

    async def _admit_pod(self, request: dict[str, Any]) -> tuple[metrics.AdmissionOutcome, AdmissionAnswer]:
        pod: dict[str, Any] = request.get("object") or {}
        namespace = str(request.get("namespace") or "")
        settings = self.settings
        reason = injection.skip_reason(pod, namespace, operator_namespace=settings.operator_namespace)
        if reason or (settings.watch_namespaces and namespace not in settings.watch_namespaces):
            logger.debug("not injecting a pod of %s: %s", namespace, reason or "namespace not watched")
            return "not-selected", AdmissionAnswer([], [])
        bundles = await self._bundles(namespace)
        decision = admission.decide(
            pod,
            bundles.values(),
            admin_port=settings.sidecar_admin_port,
            proxy_port=settings.sidecar_proxy_port,
        )
        name, who = _pod_named(pod, str(request.get("uid") or ""))
        if decision is None:
            return "not-selected", AdmissionAnswer([], [])
        after = copy.deepcopy(pod)
        if isinstance(decision, admission.Skip):
            annotations = after.setdefault("metadata", {}).setdefault("annotations", {})
            annotations[constants.ANNOTATION_NOT_INJECTED] = f"{decision.reason}: {decision.detail}"
            logger.warning(
                "not injecting %s/%s: %s (%s)", namespace, name, decision.reason, decision.detail,
                extra={"fields": {"namespace": namespace, "pod": name, "reason": decision.reason, **who}},
            )  # fmt: skip
            return "skipped", AdmissionAnswer(patch_of(pod, after), [])
        resolution = decision.resolution
        plan = injection.InjectionPlan(
            policies=resolution.policies,
            listen_ports=resolution.listen_ports,
            transparent=resolution.transparent,
            config_hash=resolution.config_hash,
            admin_port=resolution.admin_port,
            proxy_port=resolution.proxy_port,
        )
        template = injection.SidecarTemplate(
            image=settings.sidecar_image,
            image_pull_policy=settings.sidecar_image_pull_policy,
            resources=settings.sidecar_resources,
            report_url=report_url(settings),
            report_ca=self.ca_pem().decode(),
        )
        injection.inject(after, template=template, plan=plan)
        logger.info(
            "injecting the sidecar into %s/%s (policies %s, config %s)",
            namespace, name, ",".join(resolution.policies), resolution.config_hash,
            extra={"fields": {"namespace": namespace, "pod": name, "policies": list(resolution.policies),
                              "configHash": resolution.config_hash, **who}},
        )  # fmt: skip
        return "injected", AdmissionAnswer(patch_of(pod, after), [])

    async def _bundles(self, namespace: str) -> dict[str, PolicyBundle]:
        """The namespace's bundles as the API holds its policies now (see controller/admission.py)."""
        cached = asyncio.ensure_future(self.bundles.get(namespace))
        listed = await admission.read_policies(
            self.view, self.reads, namespace, deadline=ADMISSION_READ_SECONDS
        )
        ports = (self.settings.sidecar_admin_port, self.settings.sidecar_proxy_port)
        return admission.consistent_bundles(
            listed, await cached, render=lambda body: render_bundle(body, sidecar_ports=ports)
        )


def _pod_named(pod: dict[str, Any], admission_uid: str) -> tuple[str, dict[str, str]]:
    """How the log names a pod being admitted, and fields that tell two apart. A pod of a ReplicaSet
    has no name yet (the API server picks it after admission, from generateName): it is named
    ``<generateName>*`` and logged with its owner and the admission's uid (the API server's audit
    log has it too)."""
    meta = pod.get("metadata") or {}
    if meta.get("name"):
        return str(meta["name"]), {}
    fields = {"admission": admission_uid} if admission_uid else {}
    owners = [o for o in meta.get("ownerReferences") or () if isinstance(o, dict) and o.get("controller")]
    if owners:
        fields["owner"] = f"{owners[0].get('kind')}/{owners[0].get('name')}"
    return f"{meta.get('generateName') or '?'}*", fields
