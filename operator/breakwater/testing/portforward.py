"""`python -m breakwater.testing.portforward`: a TCP port of the host's loopback into a namespace.

The node's control plane listens inside the node's network namespace; tests, kubectl and helm run on
the host. This process binds 127.0.0.1:PORT on the host first, then joins the namespace, so every
connection it accepts arrives on the host's loopback and every connection it opens goes to the same
port on the namespace's loopback. Nothing else is reachable through it.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import socket
from pathlib import Path

from breakwater.testing.netns import enter


async def _pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    try:
        while data := await reader.read(65536):
            writer.write(data)
            await writer.drain()
    except (ConnectionError, OSError):
        pass
    finally:
        with contextlib.suppress(OSError):
            writer.close()


async def _serve(listener: socket.socket, target_port: int) -> None:
    async def handle(client_reader: asyncio.StreamReader, client_writer: asyncio.StreamWriter) -> None:
        try:
            upstream_reader, upstream_writer = await asyncio.open_connection("127.0.0.1", target_port)
        except OSError:
            client_writer.close()
            return
        await asyncio.gather(_pipe(client_reader, upstream_writer), _pipe(upstream_reader, client_writer))

    server = await asyncio.start_server(handle, sock=listener)
    async with server:
        await server.serve_forever()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m breakwater.testing.portforward")
    parser.add_argument("--netns", type=Path, required=True, help="path of the namespace, /var/run/netns/X")
    parser.add_argument("--port", type=int, required=True, help="port on both loopbacks")
    args = parser.parse_args(argv)
    listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    listener.bind(("127.0.0.1", args.port))
    listener.listen(128)
    enter(args.netns)  # only now: the listener stays on the host's loopback
    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(_serve(listener, args.port))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
