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


class ApiError(Exception):
    def __init__(self, status: int, message: str) -> None:
        super().__init__(f"{status}: {message}")
        self.status = status


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

    async def request(self, method: str, path: str, body: Any, *, content_type: str) -> dict[str, Any]:
        if self._session is None:
            connector = aiohttp.TCPConnector(ssl=self._ssl(), limit=self._connections)
            self._session = aiohttp.ClientSession(connector=connector, timeout=self._timeout)
        url = f"{self._configuration.host}{path}"
        async with self._session.request(
            method, url, data=json.dumps(body), headers=self._headers(content_type)
        ) as resp:
            text = await resp.text()
            if resp.status >= 300:
                raise ApiError(resp.status, text[:300])
            found: dict[str, Any] = json.loads(text) if text else {}
            return found

    async def patch_policy_status(self, namespace: str, name: str, status: dict[str, Any]) -> dict[str, Any]:
        """Merge-patch a policy's status subresource; returns the status as stored."""
        path = f"/apis/{GROUP}/{VERSION}/namespaces/{namespace}/{PLURAL}/{name}/status"
        stored = await self.request(
            "PATCH", path, {"status": status}, content_type="application/merge-patch+json"
        )
        return dict(stored.get("status") or {})

    async def create_event(self, namespace: str, event: dict[str, Any]) -> None:
        await self.request(
            "POST", f"/api/v1/namespaces/{namespace}/events", event, content_type="application/json"
        )

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
