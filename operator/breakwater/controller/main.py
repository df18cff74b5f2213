"""`breakwater operator`: run the kopf operator with Breakwater's handlers."""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import socket
import sys

from breakwater.controller import memory
from breakwater.controller import settings as operator_settings


def add_arguments(parser: argparse.ArgumentParser) -> None:
    operator_settings.add_arguments(parser)


def run(args: argparse.Namespace) -> int:
    try:
        settings = operator_settings.from_args(args)
    except operator_settings.SettingsError as exc:
        print(f"breakwater operator: {exc}", file=sys.stderr)
        return 2
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(asctime)s %(levelname)-7s %(name)s: %(message)s",
    )
    if settings.kubeconfig:
        os.environ["KUBECONFIG"] = settings.kubeconfig  # kopf's login reads it
    memory.fewer_malloc_arenas()
    import kopf

    from breakwater.controller import handlers  # noqa: F401  (registers the handlers)

    kopf.run(
        loop=_event_loop(),
        standalone=True,
        identity=_identity(),  # type: ignore[arg-type]  # a NewType of str that kopf does not export
        clusterwide=not settings.watch_namespaces,
        namespaces=settings.watch_namespaces,
        liveness_endpoint=f"http://{settings.liveness}/healthz" if settings.liveness else None,
        memo=kopf.Memo(settings=settings),
    )
    return 0


def _identity() -> str:
    """Who this operator is, for kopf's logs and annotations. kopf would ask getpass for the user
    name, which raises in the image: UID 65532 has no /etc/passwd entry (found on a real node)."""
    pod = os.environ.get("POD_NAME")
    if pod:
        return f"breakwater@{pod}"
    return f"breakwater@{socket.gethostname()}/{os.getpid()}"


def _event_loop() -> asyncio.AbstractEventLoop | None:
    """uvloop when installed (the `fast` extra, in the image), as `kopf run` would; else asyncio's own.

    Besides speed, it is memory: asyncio's own TLS transport holds a 256 KiB read buffer per connection
    (about 290 KiB each, measured), uvloop's about 35 KiB (docs/benchmarks-operator.md).
    """
    try:
        import uvloop
    except ImportError:  # pragma: no cover - uvloop is an optional extra
        return None
    return uvloop.new_event_loop()
