"""An async client of the API server with the admin certificate, and waits built on it.

Everything talks to 127.0.0.0/8 only.
"""

from __future__ import annotations

import asyncio
import json
import ssl
import time
from collections.abc import AsyncIterator, Iterable, Sequence
from typing import Any

import aiohttp

from breakwater.api.constants import ANNOTATION_INJECTED, NAMESPACE_LABEL, TOKEN_AUDIENCE
from breakwater.injection.pod import sidecar_of
from breakwater.testing.controlplane import ControlPlane

GROUP_PATH = "/apis/breakwater.dev/v1alpha1"


# -- the API, asynchronously, with the admin certificate --------------------------------------------


class Api:
    """A small aiohttp client for the API server (admin client certificate)."""

    def __init__(self, cp: ControlPlane, *, limit: int = 64) -> None:
        self.server = cp.server
        ctx = ssl.create_default_context(cafile=str(cp.ca_file))
        ctx.load_cert_chain(cp.workdir / "admin.crt", cp.workdir / "admin.key")
        self.ssl = ctx
        self.session = aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(ssl=ctx, limit=limit),
            timeout=aiohttp.ClientTimeout(total=120),
        )

    async def close(self) -> None:
        await self.session.close()

    async def request(
        self,
        method: str,
        path: str,
        body: Any = None,
        *,
        content_type: str = "application/json",
        ok: Sequence[int] = (),
    ) -> Any:
        data = json.dumps(body) if body is not None else None
        headers = {"Content-Type": content_type} if body is not None else {}
        async with self.session.request(method, self.server + path, data=data, headers=headers) as resp:
            text = await resp.text()
            if resp.status >= 300 and resp.status not in ok:
                raise RuntimeError(f"{method} {path}: {resp.status} {text[:300]}")
            return json.loads(text) if text else None

    async def get(self, path: str) -> Any:
        return await self.request("GET", path)

    async def post(self, path: str, body: Any, *, ok: Sequence[int] = ()) -> Any:
        return await self.request("POST", path, body, ok=ok)

    async def patch(self, path: str, body: Any) -> Any:
        return await self.request("PATCH", path, body, content_type="application/merge-patch+json")

    async def metrics_text(self) -> str:
        async with self.session.get(self.server + "/metrics") as resp:
            return await resp.text()

    async def watch(
        self, path: str, *, resource_version: str = ""
    ) -> AsyncIterator[tuple[float, dict[str, Any]]]:
        """Yield (monotonic arrival time, event) from a watch stream."""
        sep = "&" if "?" in path else "?"
        url = f"{self.server}{path}{sep}watch=1&allowWatchBookmarks=false"
        if resource_version:
            url += f"&resourceVersion={resource_version}"
        timeout = aiohttp.ClientTimeout(total=None, sock_read=None)
        async with self.session.get(url, timeout=timeout) as resp:
            buffer = b""
            async for chunk in resp.content.iter_any():
                now = time.monotonic()
                buffer += chunk
                while b"\n" in buffer:
                    line, buffer = buffer.split(b"\n", 1)
                    if line.strip():
                        yield now, json.loads(line)

    # conveniences ----------------------------------------------------------------------------------

    async def namespace(self, name: str, *, opted_in: bool = True) -> None:
        labels = {NAMESPACE_LABEL: "enabled"} if opted_in else {}
        await self.post(
            "/api/v1/namespaces",
            {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": name, "labels": labels}},
            ok=(409,),
        )

    async def wait_service_account(self, namespace: str, limit: float = 60) -> None:
        deadline = time.monotonic() + limit
        while time.monotonic() < deadline:
            got = await self.request(
                "GET", f"/api/v1/namespaces/{namespace}/serviceaccounts/default", ok=(404,)
            )
            if got and got.get("kind") == "ServiceAccount":
                return
            await asyncio.sleep(0.2)
        raise RuntimeError(f"no default ServiceAccount in {namespace}")

    async def pods(self, namespace: str = "", selector: str = "") -> list[dict[str, Any]]:
        path = f"/api/v1/namespaces/{namespace}/pods" if namespace else "/api/v1/pods"
        items: list[dict[str, Any]] = []
        cont = ""
        while True:
            query = f"?limit=2000&labelSelector={selector}" + (f"&continue={cont}" if cont else "")
            page = await self.get(path + query)
            items += page["items"]
            cont = page["metadata"].get("continue", "")
            if not cont:
                return items

    async def running_pod_metadata(self) -> list[dict[str, Any]]:
        """Metadata of every Running pod (PartialObjectMetadata): cheap enough to poll at 10,000 pods."""
        items: list[dict[str, Any]] = []
        cont = ""
        headers = {"Accept": "application/json;as=PartialObjectMetadataList;g=meta.k8s.io;v=v1"}
        while True:
            query = "?limit=5000&fieldSelector=status.phase%3DRunning" + (f"&continue={cont}" if cont else "")
            async with self.session.get(self.server + "/api/v1/pods" + query, headers=headers) as resp:
                text = await resp.text()
                if resp.status >= 300:
                    raise RuntimeError(f"GET pods metadata: {resp.status} {text[:300]}")
            page = json.loads(text)
            items += [item["metadata"] for item in page.get("items") or ()]
            cont = page["metadata"].get("continue", "")
            if not cont:
                return items

    async def token(self, namespace: str, pod: str, uid: str, *, seconds: int = 3600) -> str:
        body = {
            "apiVersion": "authentication.k8s.io/v1",
            "kind": "TokenRequest",
            "spec": {
                "audiences": [TOKEN_AUDIENCE],
                "expirationSeconds": seconds,
                "boundObjectRef": {"kind": "Pod", "apiVersion": "v1", "name": pod, "uid": uid},
            },
        }
        got = await self.post(f"/api/v1/namespaces/{namespace}/serviceaccounts/default/token", body)
        return str(got["status"]["token"])

    async def policy(self, namespace: str, name: str) -> dict[str, Any]:
        got: dict[str, Any] = await self.get(
            f"{GROUP_PATH}/namespaces/{namespace}/circuitbreakerpolicies/{name}"
        )
        return got


def injected_metadata(metas: Iterable[dict[str, Any]]) -> list[dict[str, Any]]:
    """The pods (metadata) the webhook injected, not being deleted."""
    return [
        m
        for m in metas
        if (m.get("annotations") or {}).get(ANNOTATION_INJECTED) == "true" and not m.get("deletionTimestamp")
    ]


def running_injected(pods: Iterable[dict[str, Any]]) -> list[dict[str, Any]]:
    return [
        p
        for p in pods
        if p["status"].get("phase") == "Running"
        and p["status"].get("podIP")
        and sidecar_of(p) is not None
        and not p["metadata"].get("deletionTimestamp")
    ]


async def gather_limited(coros: Iterable[Any], limit: int) -> list[Any]:
    sem = asyncio.Semaphore(limit)

    async def one(c: Any) -> Any:
        async with sem:
            return await c

    return list(await asyncio.gather(*(one(c) for c in coros)))


async def wait_pods(
    api: Api, namespace: str, count: int, *, limit: float = 180, interval: float = 1.0
) -> float:
    """Wait until `count` injected pods run in the namespace; returns how long it took."""
    started = time.monotonic()
    while time.monotonic() - started < limit:
        got = len(running_injected(await api.pods(namespace)))
        if got >= count:
            return time.monotonic() - started
        await asyncio.sleep(interval)
    raise RuntimeError(f"only {got}/{count} injected pods running in {namespace} after {limit} s")


async def create_policy(api: Api, namespace: str, body: dict[str, Any], *, limit: float = 60) -> None:
    """Create a policy and wait for Accepted=True, so pods created next are injected."""
    name = body["metadata"]["name"]
    await api.post(f"{GROUP_PATH}/namespaces/{namespace}/circuitbreakerpolicies", body)
    deadline = time.monotonic() + limit
    while time.monotonic() < deadline:
        got = await api.policy(namespace, name)
        for cond in (got.get("status") or {}).get("conditions") or ():
            if cond.get("type") == "Accepted" and cond.get("status") == "True":
                return
        await asyncio.sleep(0.1)
    raise RuntimeError(f"policy {namespace}/{name} not Accepted within {limit} s")
