"""A kubeconfig user's `exec` credential plugin (e.g. `aws eks get-token`): run the command, read the
bearer token from the ExecCredential it prints, and run it again once that token expires.

Tokens only: a plugin that answers with a client certificate fails with `KubeconfigError` (the TLS
context would have to change under open connections). Never interactive: the operator has no terminal.
"""

from __future__ import annotations

import datetime
import json
import os
import subprocess
import threading
from dataclasses import dataclass, field
from typing import Any

from breakwater.errors import InvalidInput

RUN_TIMEOUT = 60.0
EXPIRY_MARGIN = datetime.timedelta(seconds=10)  # renew a little early: a request takes time to arrive


class ExecCredentialError(InvalidInput):
    """The exec plugin cannot be run, or what it printed is not a usable ExecCredential."""


@dataclass
class ExecPlugin:
    command: list[str]
    api_version: str
    env: dict[str, str]
    where: str  # "kubeconfig PATH, context NAME", for messages
    cluster: dict[str, Any] | None = None  # given to the plugin when it asks (provideClusterInfo)
    _lock: threading.Lock = field(default_factory=threading.Lock, init=False, repr=False)
    _token: str | None = field(default=None, init=False, repr=False)
    _expires: datetime.datetime | None = field(default=None, init=False, repr=False)

    @classmethod
    def from_kubeconfig(cls, spec: dict[str, Any], *, where: str, cluster: dict[str, Any]) -> ExecPlugin:
        command = spec.get("command")
        if not command:
            raise ExecCredentialError(f"{where}: user exec has no command")
        if spec.get("interactiveMode") == "Always":
            raise ExecCredentialError(f"{where}: user exec needs interactiveMode Always: breakwater cannot")
        env = {str(e.get("name")): str(e.get("value") or "") for e in spec.get("env") or ()}
        info = None
        if spec.get("provideClusterInfo"):
            info = {"server": cluster.get("server")}
            if cluster.get("certificate-authority-data"):
                info["certificate-authority-data"] = cluster["certificate-authority-data"]
            if cluster.get("insecure-skip-tls-verify"):
                info["insecure-skip-tls-verify"] = True
        return cls(
            command=[str(command), *(str(a) for a in spec.get("args") or ())],
            api_version=str(spec.get("apiVersion") or "client.authentication.k8s.io/v1"),
            env=env,
            where=where,
            cluster=info,
        )

    @property
    def expires(self) -> datetime.datetime | None:
        return self._expires

    def token(self) -> str:
        """The current token, running the plugin when there is none yet or it (nearly) expired."""
        with self._lock:
            now = datetime.datetime.now(datetime.UTC)
            if self._token is None or (self._expires is not None and now >= self._expires - EXPIRY_MARGIN):
                self._token, self._expires = self._run()
            return self._token

    def _run(self) -> tuple[str, datetime.datetime | None]:
        spec: dict[str, Any] = {"interactive": False}
        if self.cluster is not None:
            spec["cluster"] = self.cluster
        exec_info = {"apiVersion": self.api_version, "kind": "ExecCredential", "spec": spec}
        env = {**os.environ, **self.env, "KUBERNETES_EXEC_INFO": json.dumps(exec_info)}
        name = self.command[0]
        try:
            done = subprocess.run(
                self.command, env=env, stdin=subprocess.DEVNULL, capture_output=True, text=True,
                timeout=RUN_TIMEOUT, check=False,
            )  # fmt: skip
        except (OSError, subprocess.TimeoutExpired) as exc:
            raise ExecCredentialError(f"{self.where}: exec plugin {name!r} could not run: {exc}") from exc
        if done.returncode != 0:
            last = (done.stderr.strip().splitlines() or ["no output"])[-1]
            raise ExecCredentialError(
                f"{self.where}: exec plugin {name!r} failed (exit {done.returncode}): {last}"
            )
        try:
            status = json.loads(done.stdout).get("status") or {}
        except (ValueError, AttributeError) as exc:
            message = f"{self.where}: exec plugin {name!r} printed no ExecCredential"
            raise ExecCredentialError(message) from exc
        if status.get("clientCertificateData") or status.get("clientKeyData"):
            raise ExecCredentialError(
                f"{self.where}: exec plugin {name!r} returned a client certificate: breakwater supports "
                "exec plugins that return a token only"
            )
        token = status.get("token")
        if not token:
            raise ExecCredentialError(f"{self.where}: exec plugin {name!r} returned no token")
        return str(token), _timestamp(status.get("expirationTimestamp"), self.where)


def _timestamp(value: Any, where: str) -> datetime.datetime | None:
    if not value:
        return None
    try:
        moment = datetime.datetime.fromisoformat(str(value).replace("Z", "+00:00"))
    except ValueError as exc:
        message = f"{where}: exec plugin expirationTimestamp {value!r} is not RFC 3339"
        raise ExecCredentialError(message) from exc
    return moment if moment.tzinfo else moment.replace(tzinfo=datetime.UTC)
