"""A small asyncio client for the operator's hot writes (policy status, Events), on the event loop.

The synchronous client (k8s/transport.py) runs each call in a worker thread. A storm, when every breaker
of a 10,000-pod fleet opens at once, is 1,000+ status writes in a few seconds: here each is one aiohttp
request on the loop, with the same server, TLS context and credentials (`kubeconfig.Configuration`).
"""

from __future__ import annotations

import json
import ssl
from typing import Any

import aiohttp

from breakwater.api.constants import GROUP, PLURAL, VERSION
from breakwater.k8s.client import ApiClient, ApiError, is_namespace_terminating
from breakwater.k8s.transport import USER_AGENT

__all__ = ["ApiError", "AsyncApi"]


class AsyncApi:
    def __init__(self, api: ApiClient, *, connections: int = 16, timeout: float = 30.0) -> None:
        self._configuration = api.configuration
        self._base = self._configuration.host
        self._connections = connections
        self._timeout = aiohttp.ClientTimeout(total=timeout)
        self._session: aiohttp.ClientSession | None = None

    def _ssl(self) -> ssl.SSLContext | bool:
        if not self._base.startswith("https:"):
            return False
        return self._configuration.ssl_context()

    def _headers(self, content_type: str) -> dict[str, str]:
        headers = {"User-Agent": USER_AGENT, "Content-Type": content_type, "Accept": "application/json"}
        authorization = self._configuration.authorization()  # current: a rotated token is re-read
        if authorization:
            headers["Authorization"] = authorization
        return headers

    async def request(
        self, method: str, path: str, body: Any = None, *, content_type: str = "application/json"
    ) -> dict[str, Any]:
        if self._session is None:
            connector = aiohttp.TCPConnector(ssl=self._ssl(), limit=self._connections)
            self._session = aiohttp.ClientSession(connector=connector, timeout=self._timeout)
        url = f"{self._base}{path}"
        data = json.dumps(body) if body is not None else None
        async with self._session.request(method, url, data=data, headers=self._headers(content_type)) as resp:
            text = await resp.text()
            if resp.status >= 300:
                raise ApiError(resp.status, text, resp.reason or "")
            found: dict[str, Any] = json.loads(text) if text else {}
            return found

    async def patch_policy_status(self, namespace: str, name: str, status: dict[str, Any]) -> dict[str, Any]:
        """Merge-patch a policy's status subresource; returns the status as stored."""
        path = f"/apis/{GROUP}/{VERSION}/namespaces/{namespace}/{PLURAL}/{name}/status"
        stored = await self.request(
            "PATCH", path, {"status": status}, content_type="application/merge-patch+json"
        )
        return dict(stored.get("status") or {})

    async def get_policy(self, namespace: str, name: str) -> dict[str, Any] | None:
        """One policy, read from etcd itself (a GET without a resourceVersion bypasses the API
        server's watch cache): what the API holds now. None if there is no such policy."""
        try:
            return await self.request(
                "GET", f"/apis/{GROUP}/{VERSION}/namespaces/{namespace}/{PLURAL}/{name}"
            )
        except ApiError as exc:
            if exc.status == 404:
                return None
            raise

    async def list_policies(self, namespace: str) -> list[dict[str, Any]]:
        """The namespace's policies, read consistently: no resourceVersion, so the API server answers
        with what etcd holds now (from its watch cache once that has caught up: up to 100 ms)."""
        found = await self.request("GET", f"/apis/{GROUP}/{VERSION}/namespaces/{namespace}/{PLURAL}")
        items: list[dict[str, Any]] = found.get("items") or []
        return items

    async def create_event(self, namespace: str, event: dict[str, Any]) -> bool:
        """Post an Event; False when its namespace is being deleted (nobody will read it)."""
        try:
            await self.request("POST", f"/api/v1/namespaces/{namespace}/events", event)
        except ApiError as exc:
            if is_namespace_terminating(exc.status, exc.body):
                return False
            raise
        return True

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
