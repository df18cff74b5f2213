"""`breakwater operator`: run one operator replica (controller/replica.py) until SIGTERM or SIGINT."""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import signal
import socket
import sys

from breakwater.controller import memory, metrics
from breakwater.controller import settings as operator_settings
from breakwater.errors import BreakwaterError
from breakwater.proxy.logs import configure_logging

logger = logging.getLogger(__name__)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    operator_settings.add_arguments(parser)


def run(args: argparse.Namespace) -> int:
    try:
        settings = operator_settings.from_args(args)
    except operator_settings.SettingsError as exc:
        print(f"breakwater operator: {exc}", file=sys.stderr)
        return 2
    configure_logging(fmt=settings.log_format, level="DEBUG" if args.verbose else "INFO")
    memory.fewer_malloc_arenas()
    if settings.metrics_listen:  # its own thread: served by every replica, leader or not
        try:
            metrics.serve(*settings.metrics_listen)
        except OSError as exc:
            print(f"breakwater operator: --metrics-listen: {exc}", file=sys.stderr)
            return 2
    from breakwater.controller.replica import OperatorReplica  # imports kopf: only for this command

    loop = _event_loop()
    stopping = asyncio.Event()

    def on_signal(sig: signal.Signals) -> None:
        if not stopping.is_set():
            logger.info("%s received: stopping", sig.name)
        stopping.set()

    def install_signals() -> None:
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, on_signal, sig)

    replica = OperatorReplica(settings, identity(), stopping, install_signals)
    install_signals()
    try:
        loop.run_until_complete(replica.run())
    except BreakwaterError as exc:
        print(f"breakwater operator: {exc}", file=sys.stderr)
        return 1
    finally:
        loop.close()
    return 0


def identity() -> str:
    """Who this replica is, in the Lease and kopf's logs: its pod (a container restarted in the same pod
    takes its Lease back at once), or host and process. kopf would ask getpass for the user name, which
    raises in the image: UID 65532 has no /etc/passwd entry (found on a real node)."""
    pod = os.environ.get("POD_NAME")
    if pod:
        return f"breakwater@{pod}"
    return f"breakwater@{socket.gethostname()}/{os.getpid()}"


def _event_loop() -> asyncio.AbstractEventLoop:
    """uvloop when installed (the `fast` extra, in the image), as `kopf run` would; else asyncio's own.

    Besides speed, it is memory: asyncio's own TLS transport holds a 256 KiB read buffer per connection
    (about 290 KiB each, measured), uvloop's about 35 KiB (docs/benchmarks-operator.md).
    """
    try:
        import uvloop
    except ImportError:  # pragma: no cover - uvloop is an optional extra
        return asyncio.new_event_loop()
    return uvloop.new_event_loop()
