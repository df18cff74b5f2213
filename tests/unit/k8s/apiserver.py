"""A scripted API server on loopback (HTTPS with its own CA, or plain HTTP): it answers (method, path) with
a status and a JSON body, and records what each request carried (headers, body, the client certificate)."""

from __future__ import annotations

import base64
import contextlib
import json
import ssl
import tempfile
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

from breakwater import pki


@dataclass
class Seen:
    method: str
    path: str
    headers: dict[str, str]
    body: Any
    client_cn: str | None
    connection: int  # which TCP connection carried it (a port number)


@dataclass
class ApiServer:
    url: str
    ca: pki.CertificateAuthority | None
    answers: dict[tuple[str, str], tuple[int, Any]] = field(default_factory=dict)
    seen: list[Seen] = field(default_factory=list)
    close_after_answer: bool = False  # drop each connection silently, as an idle timeout would

    @property
    def ca_data(self) -> str:
        assert self.ca is not None
        return base64.b64encode(self.ca.cert_pem).decode()

    def client_pair(self, name: str = "breakwater-test") -> pki.KeyPair:
        """A client certificate this server trusts."""
        assert self.ca is not None
        return self.ca.issue(name, client=True)

    def write_ca(self, directory: Path) -> Path:
        assert self.ca is not None
        path = directory / "ca.crt"
        path.write_bytes(self.ca.cert_pem)
        return path


@contextlib.contextmanager
def api_server(*, tls: bool = True) -> Iterator[ApiServer]:
    ca = pki.CertificateAuthority("loopback-ca") if tls else None
    state: dict[str, ApiServer] = {}

    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"  # keep-alive, as the API server

        def log_message(self, *args: Any) -> None:
            pass

        def _answer(self) -> None:
            server = state["server"]
            length = int(self.headers.get("Content-Length") or 0)
            raw = self.rfile.read(length) if length else b""
            cn = None
            if isinstance(self.connection, ssl.SSLSocket):
                cert = self.connection.getpeercert()
                if cert:
                    cn = dict(item[0] for item in cert["subject"]).get("commonName")
            path = self.path.split("?", 1)[0]
            body = json.loads(raw) if raw else None
            server.seen.append(
                Seen(self.command, self.path, dict(self.headers), body, cn, self.client_address[1])
            )
            status, answer = server.answers.get((self.command, path), (404, _status(404, "NotFound")))
            data = json.dumps(answer).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)
            self.close_connection = server.close_after_answer

        do_GET = do_POST = do_PUT = do_PATCH = do_DELETE = _answer  # noqa: N815

    httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    httpd.daemon_threads = True
    if ca is not None:
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        serving = ca.issue("127.0.0.1", ips=("127.0.0.1",), server=True)
        with tempfile.TemporaryDirectory() as directory:
            cert, key = serving.write(Path(directory), "serving")
            context.load_cert_chain(cert, key)
        context.load_verify_locations(cadata=ca.cert_pem.decode())
        context.verify_mode = ssl.CERT_OPTIONAL  # record a client certificate when one is presented
        httpd.socket = context.wrap_socket(httpd.socket, server_side=True)
    scheme = "https" if tls else "http"
    state["server"] = ApiServer(f"{scheme}://127.0.0.1:{httpd.server_address[1]}", ca)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    try:
        yield state["server"]
    finally:
        httpd.shutdown()
        httpd.server_close()


def _status(code: int, reason: str) -> dict[str, Any]:
    return {"kind": "Status", "apiVersion": "v1", "status": "Failure", "reason": reason, "code": code}
