"""`breakwater proxy --config FILE`: run the sidecar until SIGTERM/SIGINT, then drain and exit."""

from __future__ import annotations

import argparse
import asyncio
import gc
import ipaddress
import logging
import math
import os
import signal
from collections.abc import Callable, Coroutine
from pathlib import Path
from typing import Any

from breakwater.api.constants import SIDECAR_ADMIN_PORT, SIDECAR_FORWARD_PROXY_PORT
from breakwater.api.plain.sidecar import PlainSidecarConfig, SidecarConfigError
from breakwater.injection.podinfo import PodInfoError, carry_over
from breakwater.proxy.logs import configure_logging
from breakwater.proxy.modeclock import ModeClock
from breakwater.proxy.podsource import Binding, PodConfigSource
from breakwater.proxy.reporter import Reporter, SidecarPod
from breakwater.proxy.sidecar import Sidecar

__all__ = ["add_arguments", "run"]

log = logging.getLogger(__name__)


def _port(text: str) -> int:
    port = int(text)
    if not 1 <= port <= 65535:
        raise argparse.ArgumentTypeError(f"expected a port 1 to 65535, got {port}")
    return port


def _address(text: str) -> str:
    try:
        return str(ipaddress.ip_address(text))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an IP address, got {text!r}") from None


def _seconds(*, positive: bool) -> Callable[[str], float]:
    def parse(text: str) -> float:
        value = float(text)
        if not math.isfinite(value) or value < 0 or (positive and value == 0):
            raise argparse.ArgumentTypeError(
                f"expected {'a positive' if positive else 'a'} number of seconds"
            )
        return value

    parse.__name__ = "seconds"  # what argparse's "invalid ... value" message calls the type
    return parse


def add_arguments(parser: argparse.ArgumentParser) -> None:
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--config", metavar="FILE", help="the sidecar config (JSON), watched")
    source.add_argument(
        "--policies-dir",
        metavar="DIR",
        help="injected mode: the mounted policy bundles, resolved with --pod-labels (watched)",
    )
    pod = parser.add_argument_group("injected mode (--policies-dir; with --config the file decides)")
    pod.add_argument("--pod-labels", metavar="FILE", help="the downward-API labels file of this pod")
    pod.add_argument(
        "--listen-address", type=_address, help="where upstream listeners bind (default 127.0.0.1)"
    )
    pod.add_argument(
        "--admin-address", type=_address, help="where the admin listener binds (default 0.0.0.0)"
    )
    pod.add_argument(
        "--admin-port",
        type=_port,
        help=f"the admin listener's port: probes, /stats, /metrics (default {SIDECAR_ADMIN_PORT})",
    )
    pod.add_argument(
        "--proxy-port",
        type=_port,
        help=f"the forward proxy's port in transparent mode (default {SIDECAR_FORWARD_PROXY_PORT})",
    )
    pod.add_argument("--report-url", help="the operator's report endpoint (default $BREAKWATER_REPORT_URL)")
    pod.add_argument(
        "--report-interval",
        type=_seconds(positive=True),
        metavar="S",
        help="seconds between summary reports (default 5)",
    )
    pod.add_argument(
        "--token-file", help="the projected service-account token (default $BREAKWATER_TOKEN_FILE)"
    )
    parser.add_argument("--log-format", choices=("text", "json"), default="text", help="log line format")
    parser.add_argument(
        "--log-level",
        default="INFO",
        choices=("DEBUG", "INFO", "WARNING", "ERROR"),
        type=str.upper,
        help="the least severe level logged (default INFO)",
    )
    parser.add_argument(
        "--drain-seconds",
        type=_seconds(positive=False),
        default=10.0,
        metavar="S",
        help="on SIGTERM, how long requests in flight may take to finish (default 10)",
    )
    parser.add_argument(
        "--poll-seconds",
        type=_seconds(positive=True),
        default=1.0,
        metavar="S",
        help="config file check interval (default 1)",
    )


def _injected_mode_defaults(args: argparse.Namespace) -> None:
    """The injected-mode flags not given take their defaults (None until now: given with --config,
    they would be ignored, which `run` refuses)."""
    defaults = {
        "listen_address": "127.0.0.1",
        "admin_address": "0.0.0.0",
        "admin_port": SIDECAR_ADMIN_PORT,
        "proxy_port": SIDECAR_FORWARD_PROXY_PORT,
        "report_url": os.environ.get("BREAKWATER_REPORT_URL"),
        "report_interval": 5.0,
        "token_file": os.environ.get("BREAKWATER_TOKEN_FILE"),
    }
    for name, value in defaults.items():
        if getattr(args, name) is None:
            setattr(args, name, value)


_INJECTED_MODE_FLAGS = (
    "pod_labels",
    "listen_address",
    "admin_address",
    "admin_port",
    "proxy_port",
    "report_url",
    "report_interval",
    "token_file",
)


async def _serve(args: argparse.Namespace) -> int:
    if args.policies_dir:
        return await _serve_pod(args)
    sidecar = Sidecar(
        config_path=args.config, drain_seconds=args.drain_seconds, poll_interval=args.poll_seconds
    )
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    try:
        await sidecar.start()
    except OSError as exc:
        log.error("cannot start: %s", exc)
        return 1
    clock = _mode_clock(sidecar)
    _freeze_startup_objects()
    if not sidecar.ready:
        log.warning("started without a usable config; /readyz answers 503 until one loads")
    await stop.wait()
    log.info("signal received: draining", extra={"fields": {"drain_seconds": args.drain_seconds}})
    await clock.stop()
    await sidecar.stop()
    return 0


async def _serve_pod(args: argparse.Namespace) -> int:
    """Injected mode: config from the mounted bundles, then live from the operator's report channel."""
    if not args.pod_labels:
        log.error("--policies-dir needs --pod-labels (the downward-API labels file)")
        return 2
    binding = Binding(
        listen_address=args.listen_address,
        admin_address=args.admin_address,
        admin_port=args.admin_port,
        proxy_port=args.proxy_port,
    )
    source = PodConfigSource(Path(args.policies_dir), Path(args.pod_labels), binding)
    try:
        initial = source.load()
    except (PodInfoError, SidecarConfigError) as exc:
        log.error("cannot resolve the pod's config: %s", exc)
        return 1
    # No PUT /config in a pod: the policies decide (see proxy/admin.py).
    sidecar = Sidecar(config=initial, drain_seconds=args.drain_seconds, config_api=False)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    try:
        await sidecar.start()
    except OSError as exc:
        log.error("cannot start: %s", exc)
        return 1
    clock = _mode_clock(sidecar)
    _freeze_startup_objects()
    tasks = [asyncio.create_task(source.follow(sidecar, interval=args.poll_seconds))]
    reporter = None
    if args.report_url and args.token_file:

        async def apply_live(config: PlainSidecarConfig) -> None:
            await sidecar.apply_config(binding.apply(carry_over(sidecar.config, config)), source="operator")
            log.info("config %s from the operator applied", config.config_hash)

        identity = SidecarPod(
            namespace=os.environ.get("POD_NAMESPACE", ""),
            pod=os.environ.get("POD_NAME", ""),
            uid=os.environ.get("POD_UID", ""),
        )
        reporter = Reporter(
            sidecar=sidecar,
            url=args.report_url.rstrip("/"),
            identity=identity,
            token_file=Path(args.token_file),
            on_config=apply_live,
            ca_pem=os.environ.get("BREAKWATER_REPORT_CA", ""),
            interval=args.report_interval,
        )
        await reporter.start()
    else:
        log.info("no --report-url/--token-file: running on the mounted config only, not reporting")
    await stop.wait()
    log.info("signal received: draining", extra={"fields": {"drain_seconds": args.drain_seconds}})
    for task in tasks:
        task.cancel()
    if reporter is not None:
        await reporter.stop()
    await clock.stop()
    await sidecar.stop()
    return 0


def _mode_clock(sidecar: Sidecar) -> ModeClock:
    """Overrides end at their `until` by this pod's clock, whether or not the operator is there."""
    clock = ModeClock(lambda: [(up.config, up.breaker) for up in sidecar.routes.by_name.values()])
    clock.start()
    return clock


def _freeze_startup_objects() -> None:
    """Move everything allocated at startup (modules, models, registries) out of the collector's sight,
    so the periodic full collections of a long-running proxy only walk what requests allocate."""
    gc.collect()
    gc.freeze()


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
    if args.config:
        given = [
            f"--{name.replace('_', '-')}" for name in _INJECTED_MODE_FLAGS if getattr(args, name) is not None
        ]
        if given:
            log.error("%s only with --policies-dir: with --config, the file decides", ", ".join(given))
            return 2
    _injected_mode_defaults(args)
    return _runner()(_serve(args))
