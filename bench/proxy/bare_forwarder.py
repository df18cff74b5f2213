"""The floor of a Python forwarder: asyncio protocols under uvloop, httptools both ways, a keep-alive
upstream pool, and nothing else (no breaker, no deadline, no metrics, GET without bodies only, no
hop-by-hop handling). What the sidecar's fast path costs above it is its features and bookkeeping.

Run: ``python bare_forwarder.py --listen 18086 --upstream 127.0.0.1:18080``. Not for real traffic.
"""

from __future__ import annotations

import argparse
import asyncio

import httptools
import uvloop

_POOL: list[Upstream] = []


class Upstream(asyncio.Protocol):
    def __init__(self) -> None:
        self.transport: asyncio.Transport | None = None
        self.client: Client | None = None
        self.out: list[bytes] = []
        self.parser = httptools.HttpResponseParser(self)

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        self.parser.feed_data(data)

    def on_header(self, name: bytes, value: bytes) -> None:
        self.out.append(b"%b: %b\r\n" % (name, value))

    def on_headers_complete(self) -> None:
        self.out[0] = b"HTTP/1.1 %d OK\r\n" % self.parser.get_status_code()
        self.out.append(b"\r\n")

    def on_body(self, body: bytes) -> None:
        self.out.append(body)

    def on_message_complete(self) -> None:
        client, self.client = self.client, None
        if client is not None and client.transport is not None:
            client.transport.writelines(self.out)
        _POOL.append(self)


class Client(asyncio.Protocol):
    upstream: tuple[str, int] = ("127.0.0.1", 0)

    def __init__(self) -> None:
        self.transport: asyncio.Transport | None = None
        self.parser = httptools.HttpRequestParser(self)
        self.lines: list[bytes] = []
        self.url = b""

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        self.parser.feed_data(data)

    def on_message_begin(self) -> None:
        self.lines = []
        self.url = b""

    def on_url(self, url: bytes) -> None:
        self.url += url

    def on_header(self, name: bytes, value: bytes) -> None:
        if name.lower() != b"host":
            self.lines.append(b"%b: %b\r\n" % (name, value))

    def on_message_complete(self) -> None:
        head = b"".join(
            (self.parser.get_method(), b" ", self.url, b" HTTP/1.1\r\nHost: up\r\n", *self.lines, b"\r\n")
        )
        if _POOL:
            self._send(_POOL.pop(), head)
        else:
            asyncio.get_running_loop().create_task(self._connect(head))

    async def _connect(self, head: bytes) -> None:
        _, upstream = await asyncio.get_running_loop().create_connection(Upstream, *self.upstream)
        self._send(upstream, head)

    def _send(self, upstream: Upstream, head: bytes) -> None:
        upstream.client = self
        upstream.out = [b""]
        assert upstream.transport is not None
        upstream.transport.write(head)


async def serve(listen: int) -> None:
    server = await asyncio.get_running_loop().create_server(Client, "127.0.0.1", listen, backlog=4096)
    await server.serve_forever()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--listen", type=int, required=True)
    parser.add_argument("--upstream", required=True, help="127.0.0.1:PORT")
    args = parser.parse_args()
    host, _, port = args.upstream.rpartition(":")
    Client.upstream = (host, int(port))
    uvloop.run(serve(args.listen))


if __name__ == "__main__":
    main()
