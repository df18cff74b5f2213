"""A small asyncio client for the operator's hot writes (policy status, Events), on the event loop.

The kubernetes client is synchronous: each call runs in a worker thread and spends a few milliseconds of
Python (building, validating and decoding models) under the GIL the event loop needs. A storm, when
every breaker of a 10,000-pod fleet opens at once, is 1,000+ status writes in a few seconds: here each
is one aiohttp request with the same server, TLS and credentials as the kubernetes client's.
"""

from __future__ import annotations

import json
import ssl
from typing import Any

import aiohttp
from kubernetes import client

from breakwater.api.constants import GROUP, PLURAL, VERSION
from breakwater.errors import KubernetesError
from breakwater.k8s.client import is_namespace_terminating


class ApiError(KubernetesError):
    """An error answer to one of the operator's own requests (status writes, Events, policy reads)."""


class AsyncApi:
    def __init__(self, api: client.ApiClient, *, connections: int = 16, timeout: float = 30.0) -> None:
        self._api = api
        self._configuration = api.configuration
        self._connections = connections
        self._timeout = aiohttp.ClientTimeout(total=timeout)
        self._session: aiohttp.ClientSession | None = None

    def _ssl(self) -> ssl.SSLContext | bool:
        cfg = self._configuration
        if not cfg.verify_ssl:
            return False
        context = (
            ssl.create_default_context(cafile=cfg.ssl_ca_cert)
            if cfg.ssl_ca_cert
            else ssl.create_default_context()
        )
        if cfg.cert_file:
            context.load_cert_chain(cfg.cert_file, cfg.key_file)
        if cfg.assert_hostname is False:
            context.check_hostname = False
        return context

    def _headers(self, content_type: str) -> dict[str, str]:
        headers = {**self._api.default_headers, "Content-Type": content_type, "Accept": "application/json"}
        for auth in self._configuration.auth_settings().values():  # refreshes an expiring token itself
            if auth.get("in") == "header" and auth.get("value"):
                headers[auth["key"]] = auth["value"]
        return headers

    async def request(
        self, method: str, path: str, body: Any = None, *, content_type: str = "application/json"
    ) -> dict[str, Any]:
        if self._session is None:
            connector = aiohttp.TCPConnector(ssl=self._ssl(), limit=self._connections)
            self._session = aiohttp.ClientSession(connector=connector, timeout=self._timeout)
        url = f"{self._configuration.host}{path}"
        data = json.dumps(body) if body is not None else None
        async with self._session.request(method, url, data=data, headers=self._headers(content_type)) as resp:
            text = await resp.text()
            if resp.status >= 300:
                raise ApiError(resp.status, text)
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
