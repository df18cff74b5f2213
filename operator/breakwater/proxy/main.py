"""`breakwater proxy --config FILE`: run the sidecar until SIGTERM/SIGINT, then drain and exit."""

from __future__ import annotations

import argparse
import asyncio
import logging
import signal
from collections.abc import Callable, Coroutine
from typing import Any

from breakwater.proxy.logs import configure_logging
from breakwater.proxy.sidecar import Sidecar

__all__ = ["add_arguments", "run"]

log = logging.getLogger("breakwater.proxy")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", required=True, metavar="FILE", help="the sidecar config (JSON), watched")
    parser.add_argument("--log-format", choices=("text", "json"), default="text", help="log line format")
    parser.add_argument(
        "--log-level", default="INFO", choices=("DEBUG", "INFO", "WARNING", "ERROR"), type=str.upper
    )
    parser.add_argument(
        "--drain-seconds",
        type=float,
        default=10.0,
        metavar="S",
        help="on SIGTERM, how long requests in flight may take to finish (default 10)",
    )
    parser.add_argument(
        "--poll-seconds", type=float, default=1.0, metavar="S", help="config file check interval (default 1)"
    )


async def _serve(args: argparse.Namespace) -> int:
    sidecar = Sidecar(
        config_path=args.config, drain_seconds=args.drain_seconds, poll_interval=args.poll_seconds
    )
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await sidecar.start()
    if not sidecar.ready:
        log.warning("started without a usable config; /readyz answers 503 until one loads")
    await stop.wait()
    log.info("signal received: draining", extra={"fields": {"drain_seconds": args.drain_seconds}})
    await sidecar.stop()
    return 0


def _runner() -> Callable[[Coroutine[Any, Any, int]], int]:
    try:
        import uvloop
    except ImportError:  # pragma: no cover - uvloop is an optional extra
        return asyncio.run

    def run_with_uvloop(coro: Coroutine[Any, Any, int]) -> int:
        with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
            return runner.run(coro)

    return run_with_uvloop


def run(args: argparse.Namespace) -> int:
    configure_logging(fmt=args.log_format, level=args.log_level)
    return _runner()(_serve(args))
