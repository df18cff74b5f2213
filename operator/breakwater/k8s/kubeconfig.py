"""Where the API server is and how to prove who we are: a `Configuration` read from a kubeconfig or from
the in-cluster service account, without the kubernetes client (its import alone keeps 10.8 MiB of RSS in
the operator, docs/benchmarks-operator.md).

Supported, as the operator needs them: the server (https or http, with a path prefix), its CA (file or
data) or insecure-skip-tls-verify, a client certificate and key (files or data), a bearer token (inline,
from a token file re-read whenever the file changes, or from an `exec` credential plugin re-run when its
token expires), username and password. What is not (auth-provider plugins, tls-server-name, proxy-url,
an exec plugin that returns a client certificate) fails at load time with `KubeconfigError`, one line.
"""

from __future__ import annotations

import atexit
import base64
import os
import ssl
import tempfile
import threading
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import yaml

from breakwater.errors import InvalidInput
from breakwater.k8s.exec_credential import ExecCredentialError, ExecPlugin

SERVICE_ACCOUNT_DIR = Path("/var/run/secrets/kubernetes.io/serviceaccount")
DEFAULT_KUBECONFIG = "~/.kube/config"
UNSUPPORTED_CLUSTER_FIELDS = ("tls-server-name", "proxy-url")


class KubeconfigError(InvalidInput):
    """A kubeconfig or service account that cannot be used; the message says which and why."""


class KubeconfigNotFound(KubeconfigError):
    """No kubeconfig file where one was looked for."""


class NotInCluster(KubeconfigError):
    """No service account here (KUBERNETES_SERVICE_HOST unset, or its token or CA missing)."""


@dataclass
class Configuration:
    """One API server and one identity. `authorization()` is thread-safe and always current."""

    host: str  # scheme://host:port[/prefix], no trailing slash
    ca_file: str | None = None
    ca_data: bytes | None = None  # PEM
    cert_file: str | None = None
    cert_data: bytes | None = None  # PEM
    key_file: str | None = None
    key_data: bytes | None = None  # PEM
    insecure: bool = False
    token: str | None = None
    token_file: str | None = None
    username: str | None = None
    password: str | None = None
    exec_plugin: ExecPlugin | None = None
    namespace: str | None = None  # the service account's, in a cluster
    _lock: threading.Lock = field(default_factory=threading.Lock, init=False, repr=False, compare=False)
    _file_token: tuple[tuple[int, int, int], str] | None = field(
        default=None, init=False, repr=False, compare=False
    )
    _ssl: ssl.SSLContext | None = field(default=None, init=False, repr=False, compare=False)

    def bearer_token(self) -> str | None:
        """The token to send now: a token file is re-read when it changed (the kubelet rotates it by
        swapping a symlink: a new inode), an exec plugin re-run when its token expired."""
        if self.exec_plugin is not None:
            return self.exec_plugin.token()
        if self.token_file:
            return self._read_token_file(self.token_file)
        return self.token

    def authorization(self) -> str | None:
        """The Authorization header's value, or None for a client certificate alone."""
        token = self.bearer_token()
        if token:
            return f"Bearer {token}"
        if self.username is not None and self.password is not None:
            pair = f"{self.username}:{self.password}".encode()
            return f"Basic {base64.b64encode(pair).decode()}"
        return None

    def _read_token_file(self, path: str) -> str:
        st = os.stat(path)
        stamp = (st.st_ino, st.st_mtime_ns, st.st_size)
        with self._lock:
            if self._file_token is None or self._file_token[0] != stamp:
                self._file_token = (stamp, Path(path).read_text().strip())
            return self._file_token[1]

    def ssl_context(self) -> ssl.SSLContext:
        """One context for every connection (sync and asyncio), made on first use."""
        with self._lock:
            if self._ssl is None:
                self._ssl = self._make_ssl_context()
            return self._ssl

    def _make_ssl_context(self) -> ssl.SSLContext:
        if self.insecure:
            context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
            context.check_hostname = False
            context.verify_mode = ssl.CERT_NONE
        elif self.ca_file or self.ca_data:
            context = ssl.create_default_context(
                cafile=self.ca_file, cadata=self.ca_data.decode() if self.ca_data else None
            )
        else:
            context = ssl.create_default_context()
        cert, key = self.client_cert_files()
        if cert:
            context.load_cert_chain(cert, key)
        return context

    def client_cert_files(self) -> tuple[str | None, str | None]:
        """The client certificate and key as files (ssl loads only files): data is written once to
        private temporary files, removed at exit, as the kubernetes client did."""
        if self.cert_data and not self.cert_file:
            self.cert_file = _private_file(self.cert_data, "cert")
        if self.key_data and not self.key_file:
            self.key_file = _private_file(self.key_data, "key")
        return self.cert_file, self.key_file


def _private_file(data: bytes, what: str) -> str:
    fd, path = tempfile.mkstemp(prefix=f"breakwater-{what}-", suffix=".pem")  # mode 0600
    with os.fdopen(fd, "wb") as out:
        out.write(data)
    atexit.register(lambda: Path(path).unlink(missing_ok=True))
    return path


def load(kubeconfig: str | None = None) -> Configuration:
    """`--kubeconfig` if given; else the in-cluster service account; else $KUBECONFIG or ~/.kube/config
    (what the operator did with the kubernetes client)."""
    if kubeconfig:
        return from_kubeconfig(kubeconfig)
    try:
        return in_cluster()
    except NotInCluster as not_in_cluster:
        try:
            return from_kubeconfig(None)
        except KubeconfigNotFound as exc:
            raise KubeconfigNotFound(f"{not_in_cluster}, and {exc}") from exc


def in_cluster(
    directory: Path = SERVICE_ACCOUNT_DIR, environ: Mapping[str, str] = os.environ
) -> Configuration:
    host, port = environ.get("KUBERNETES_SERVICE_HOST"), environ.get("KUBERNETES_SERVICE_PORT")
    if not host or not port:
        raise NotInCluster("not in a cluster: KUBERNETES_SERVICE_HOST or KUBERNETES_SERVICE_PORT unset")
    token, ca, namespace = directory / "token", directory / "ca.crt", directory / "namespace"
    if not token.is_file() or not token.read_text().strip():
        raise NotInCluster(f"in-cluster service account token {token} missing or empty")
    if not ca.is_file():
        raise NotInCluster(f"in-cluster CA {ca} missing")
    if ":" in host:  # an IPv6 address
        host = f"[{host}]"
    return Configuration(
        host=f"https://{host}:{port}",
        ca_file=str(ca),
        token_file=str(token),
        namespace=namespace.read_text().strip() if namespace.is_file() else None,
    )


def from_kubeconfig(path: str | None, context: str | None = None) -> Configuration:
    """The kubeconfig's current context (or `context`). `path` None: $KUBECONFIG (several files,
    merged as kubectl does: the first to set a name or the current context wins) or ~/.kube/config."""
    paths = [path] if path else _default_paths()
    merged = _merged(paths)
    name = context or merged.get("current-context")
    if not name:
        raise KubeconfigError(f"kubeconfig {', '.join(paths)}: no current-context")
    ctx = _named(merged, "contexts", name, "context")
    cluster = _named(merged, "clusters", str(ctx.get("cluster") or ""), "cluster")
    user = _named(merged, "users", str(ctx.get("user") or ""), "user") if ctx.get("user") else {}
    where = f"kubeconfig {', '.join(paths)}, context {name!r}"
    return _configuration(cluster, user, where)


def _default_paths() -> list[str]:
    found = [p for p in os.environ.get("KUBECONFIG", "").split(os.pathsep) if p]
    return found or [os.path.expanduser(DEFAULT_KUBECONFIG)]


def _merged(paths: list[str]) -> dict[str, Any]:
    """One document from several kubeconfigs; its `_base`: the directory each named entry's relative
    paths are relative to (its own file's)."""
    merged: dict[str, Any] = {"clusters": [], "contexts": [], "users": []}
    base: dict[str, Path] = {}
    read = 0
    for path in paths:
        file = Path(path)
        if not file.is_file():
            if len(paths) == 1:
                raise KubeconfigNotFound(f"kubeconfig {path} not found")
            continue
        try:
            doc = yaml.safe_load(file.read_text(encoding="utf-8")) or {}
        except (OSError, UnicodeDecodeError, yaml.YAMLError) as exc:
            raise KubeconfigError(f"kubeconfig {path}: {exc}".replace("\n", " ")) from exc
        if not isinstance(doc, dict):
            raise KubeconfigError(f"kubeconfig {path}: not a mapping")
        read += 1
        if not merged.get("current-context"):
            merged["current-context"] = doc.get("current-context") or ""
        for section in ("clusters", "contexts", "users"):
            known = {entry.get("name") for entry in merged[section]}
            for entry in doc.get(section) or ():
                if isinstance(entry, dict) and entry.get("name") not in known:
                    merged[section].append(entry)
                    base[f"{section}/{entry.get('name')}"] = file.parent
    if not read:
        raise KubeconfigNotFound(f"no kubeconfig found at {', '.join(paths)}")
    merged["_base"] = base
    return merged


def _named(doc: dict[str, Any], section: str, name: str, key: str) -> dict[str, Any]:
    for entry in doc.get(section) or ():
        if entry.get("name") == name:
            if not isinstance(entry.get(key) or {}, dict):
                raise KubeconfigError(f"kubeconfig: {key} {name!r} is not a mapping")
            found = dict(entry.get(key) or {})
            found["_base"] = doc["_base"].get(f"{section}/{name}")
            return found
    raise KubeconfigError(f"kubeconfig: no {key} named {name!r}")


def _configuration(cluster: dict[str, Any], user: dict[str, Any], where: str) -> Configuration:
    for unsupported in UNSUPPORTED_CLUSTER_FIELDS:
        if cluster.get(unsupported):
            raise KubeconfigError(f"{where}: cluster {unsupported} is not supported by breakwater")
    if user.get("auth-provider"):
        provider = (user["auth-provider"] or {}).get("name") or "?"
        raise KubeconfigError(
            f"{where}: user auth-provider {provider!r} is not supported by breakwater "
            "(use a token, a client certificate or an exec credential plugin)"
        )
    server = str(cluster.get("server") or "").rstrip("/")
    if not _is_http_url(server):
        raise KubeconfigError(f"{where}: cluster server {server!r} is not an http(s) URL")
    cluster_dir, user_dir = cluster.pop("_base", None), user.pop("_base", None)
    config = Configuration(
        host=server,
        ca_file=_path(cluster.get("certificate-authority"), cluster_dir),
        ca_data=_data(cluster.get("certificate-authority-data"), where, "certificate-authority-data"),
        insecure=bool(cluster.get("insecure-skip-tls-verify")),
        cert_file=_path(user.get("client-certificate"), user_dir),
        cert_data=_data(user.get("client-certificate-data"), where, "client-certificate-data"),
        key_file=_path(user.get("client-key"), user_dir),
        key_data=_data(user.get("client-key-data"), where, "client-key-data"),
        token=user.get("token") or None,
        token_file=_path(user.get("tokenFile"), user_dir),
        username=user.get("username"),
        password=user.get("password"),
    )
    if user.get("exec"):
        if not isinstance(user["exec"], dict):
            raise KubeconfigError(f"{where}: user exec is not a mapping")
        try:  # run it now: a plugin that cannot run fails at start, in one line
            config.exec_plugin = ExecPlugin.from_kubeconfig(user["exec"], where=where, cluster=cluster)
            config.exec_plugin.token()
        except ExecCredentialError as exc:
            raise KubeconfigError(str(exc)) from exc
    for what, file in (("certificate-authority", config.ca_file), ("client-certificate", config.cert_file),
                       ("client-key", config.key_file), ("tokenFile", config.token_file)):  # fmt: skip
        if file and not Path(file).is_file():
            raise KubeconfigError(f"{where}: {what} {file} not found")
    try:  # load the CA and client certificate now: ones that do not load fail at start, in one line
        config.ssl_context()
    except (ssl.SSLError, OSError) as exc:
        raise KubeconfigError(f"{where}: the CA or the client certificate does not load: {exc}") from exc
    return config


def _is_http_url(text: str) -> bool:
    try:
        url = urlsplit(text)
        url.port  # noqa: B018 -- raises ValueError for a port that is not a number from 0 to 65535
    except ValueError:
        return False
    return url.scheme in ("https", "http") and bool(url.hostname)


def _path(value: Any, base: Path | None) -> str | None:
    """A path from a kubeconfig: a relative one is relative to that kubeconfig's directory."""
    if not value:
        return None
    path = Path(str(value))
    return str(path if path.is_absolute() or base is None else base / path)


def _data(value: Any, where: str, what: str) -> bytes | None:
    if not value:
        return None
    try:
        return base64.b64decode(str(value), validate=True)
    except ValueError as exc:
        raise KubeconfigError(f"{where}: {what} is not base64") from exc
