"""The sidecar: listeners, config (file + push), breakers, transitions, admin; start, reload, drain.

In-process use (tests, embedding)::

    async with run_sidecar(config_path) as sidecar:
        port = sidecar.listen_port("payments")          # the bound port (listenPort 0 = ephemeral)
        sidecar.transition_listeners.append(on_event)   # TransitionEvent per breaker transition
        await sidecar.apply_config(new_config)          # what PUT /config does

Structure: the sidecar owns its data-plane listeners (`ListenerSet`: each upstream's ``listenPort``
and the forward proxy, served by the fast path, `proxy/fast/`), the admin listener
(`proxy/admin_server.py`, serving `proxy/admin.py`) and the config watcher. The full path
(`proxy/full/`: an aiohttp `ClientSession`, `FullExchange`, `FullForwardProxy`) is made on its first
request: what the fast path hands over, or every request when ``fast_path=False``. Both read the
current `RouteTable`, so both use the same breaker, counters and fallbacks per upstream.

Reload = `apply_config`: validate, bind the listeners the new config adds (rolled back if one cannot
bind), update the per-name live parts (breaker reconfigured only if its settings changed; counters,
bulkhead slots, budget, cache kept), swap the `RouteTable` in one assignment, then let removed
listeners drain in the background. A request keeps the `LiveUpstream` it started with.

Breaker state never feeds `/healthz` or `/readyz`: ready means "a config is loaded", nothing else.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final

from breakwater.api.plain.sidecar import PlainAdminConfig, PlainSidecarConfig, SidecarConfigError
from breakwater.breaker import Transition
from breakwater.proxy.admin import AdminAnswer, AdminRequest, handle, stats_document
from breakwater.proxy.admin_server import AdminServer
from breakwater.proxy.compiled import hot_path_build
from breakwater.proxy.fast.listener import FastPath
from breakwater.proxy.listeners import ListenerKey, ListenerSet
from breakwater.proxy.logs import CONFIG_CHANNEL
from breakwater.proxy.reload import (
    ConfigApplyError,
    ConfigWatcher,
    ReloadCounters,
    ReloadHistory,
    ReloadStatus,
    StaleConfigError,
)
from breakwater.proxy.stats import TransitionEvent, TransitionListener, publish_transition
from breakwater.proxy.targets import ForwardRouter
from breakwater.proxy.upstream import LiveParts, LiveUpstream, RouteTable

if TYPE_CHECKING:
    from breakwater.proxy.full.path import FullPath, Handler

__all__ = [
    "ADMIN_TOKEN_ENV",
    "ConfigApplyError",
    "ReloadStatus",
    "Sidecar",
    "StaleConfigError",
    "run_sidecar",
]

log = logging.getLogger(__name__)
config_log = logging.getLogger(CONFIG_CHANNEL)

ADMIN_TOKEN_ENV: Final = "BREAKWATER_ADMIN_TOKEN"
"""If set, ``PUT /config`` (and ``GET /config``) need ``Authorization: Bearer <token>``; if not, they
are served to loopback clients only. Injected sidecars refuse ``PUT /config`` (`config_api=False`)."""


@dataclass(slots=True)
class _Timing:
    started_at: float = field(default_factory=time.time)


class Sidecar:
    """The circuit-breaker sidecar. Start with `start()` / `stop()` or `run_sidecar(...)`.

    ``idle_timeout``: how long a client connection may sit idle (or dribble a request head) before it is
    closed; ``pool_keepalive``: how long an idle upstream connection stays pooled; ``drain_seconds``:
    how long requests in flight may finish at shutdown (and on a listener a reload removed);
    ``admin``: where the admin listener binds while no config could be loaded (else the config's);
    ``fast_path``: serve requests on the fast path (False: every request on the full path);
    ``config_api``: accept ``PUT /config`` (False in injected pods: the policies decide their config,
    and every container of a pod shares its loopback).
    """

    def __init__(
        self,
        *,
        config_path: str | Path | None = None,
        config: PlainSidecarConfig | None = None,
        poll_interval: float = 1.0,
        drain_seconds: float = 10.0,
        idle_timeout: float = 60.0,
        pool_keepalive: float = 15.0,
        admin_token: str | None = None,
        admin: PlainAdminConfig | None = None,
        clock: Callable[[], float] = time.monotonic,
        fast_path: bool = True,
        config_api: bool = True,
    ) -> None:
        if config_path is None and config is None:
            raise ValueError("a Sidecar needs a config_path, a config, or both")
        self.config_path = Path(config_path) if config_path is not None else None
        self._initial_config = config
        self.poll_interval = poll_interval
        self.drain_seconds = drain_seconds
        self.idle_timeout = idle_timeout
        self.pool_keepalive = pool_keepalive
        self.admin_token = admin_token if admin_token is not None else os.environ.get(ADMIN_TOKEN_ENV) or None
        self.clock = clock
        self.config_api = config_api

        self.routes: RouteTable = RouteTable.empty()
        self.config: PlainSidecarConfig | None = None
        self.transition_listeners: list[TransitionListener] = []
        self.reloads = ReloadHistory()
        self.timing = _Timing()

        self._live: dict[str, LiveParts] = {}
        self.router = ForwardRouter(
            routes=lambda: self.routes, clock=clock, own_address=self._forward_proxy_address
        )
        self._fast = (
            FastPath(
                source=self,
                router=self.router,
                idle_timeout=idle_timeout,
                pool_keepalive=pool_keepalive,
            )
            if fast_path
            else None
        )
        self._listeners = ListenerSet(
            self._handler, idle_timeout=idle_timeout, drain_seconds=drain_seconds, fast=self._fast
        )
        self._apply_lock = asyncio.Lock()
        self._watcher: ConfigWatcher | None = None
        self._watch_task: asyncio.Task[None] | None = None
        self._full: FullPath | None = None
        self._admin = AdminServer(self._admin_request)
        self._started = False
        self._admin_bound: PlainAdminConfig | None = None
        self._admin_fallback = admin or PlainAdminConfig()
        self._stopped = asyncio.Event()

    # ------------------------------------------------------------------------------------------------
    # Public surface
    # ------------------------------------------------------------------------------------------------

    @property
    def ready(self) -> bool:
        """A config is loaded (the only readiness condition: breaker state never matters)."""
        return self.config is not None

    @property
    def admin_port(self) -> int | None:
        return self._admin.port

    @property
    def started_at(self) -> float:
        return self.timing.started_at

    @property
    def admin_url(self) -> str:
        address = self._admin_bound.address if self._admin_bound is not None else "127.0.0.1"
        if address in ("0.0.0.0", "::"):
            address = "127.0.0.1"
        host = f"[{address}]" if ":" in address else address
        return f"http://{host}:{self.admin_port}"

    @property
    def forward_proxy_port(self) -> int | None:
        return self._listeners.port("forward")

    def listen_port(self, upstream: str) -> int:
        """The port `upstream`'s listener is bound to (`KeyError` if it has none)."""
        port = self._listeners.port("upstream", upstream)
        if port is None:
            raise KeyError(upstream)
        return port

    def client_connections(self) -> int:
        """Client connections open on the data-plane listeners right now."""
        return self._listeners.client_connections()

    def upstream(self, name: str) -> LiveUpstream:
        return self.routes.by_name[name]

    async def start(self) -> None:
        """Load the config, bind every listener, start watching the file."""
        if self._fast is not None:
            self._fast.start()
        self._started = True
        await self._load_initial()
        if self.config_path is not None:
            self._watcher = self._watcher or self._make_watcher(self.config_path)
            self._watch_task = asyncio.get_running_loop().create_task(self._watcher.run())
        admin = self.config.admin if self.config is not None else self._admin_fallback
        try:
            await self._bind_admin(admin)
        except BaseException:
            await self._shut_down()
            raise
        log.info(
            "sidecar started",
            extra={
                "fields": {
                    "admin": self.admin_url,
                    "ready": self.ready,
                    "config_hash": self.routes.config_hash,
                    "hot_path": hot_path_build(),
                }
            },
        )

    async def stop(self) -> None:
        """Stop accepting, drain requests in flight up to ``drain_seconds``, close everything."""
        if not self._started:
            return
        await self._shut_down()
        self._stopped.set()
        log.info("sidecar stopped")

    async def _shut_down(self) -> None:
        self._started = False
        await self._admin.stop()
        if self._watch_task is not None:
            self._watch_task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._watch_task
            self._watch_task = None
        await self._listeners.close()
        if self._fast is not None:
            self._fast.close()
        if self._full is not None:
            await self._full.close()
            self._full = None

    async def _admin_request(self, request: AdminRequest) -> AdminAnswer:
        return await handle(self, request)

    async def wait_stopped(self) -> None:
        await self._stopped.wait()

    async def __aenter__(self) -> Sidecar:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    async def apply_config(self, config: PlainSidecarConfig, *, source: str = "api") -> bool:
        """Make `config` the running one (atomic swap). False when it equals the running config.

        Raises `StaleConfigError` for a lower ``generation``, `ConfigApplyError` when it cannot be
        applied (the running config stays; the error shows on /readyz and /stats).
        """
        async with self._apply_lock:
            try:
                return await self._apply(config, source)
            except ConfigApplyError as exc:
                self.record_failure(source, str(exc))
                raise

    def stats(self) -> dict[str, Any]:
        """The /stats document."""
        return stats_document(self)

    # ------------------------------------------------------------------------------------------------
    # Lifecycle (the admin app's cleanup context)
    # ------------------------------------------------------------------------------------------------

    def _full_path(self) -> FullPath:
        """The full path, made on the first request that needs it."""
        if self._full is None:
            from breakwater.proxy.full.path import FullPath

            self._full = FullPath(
                routes=lambda: self.routes, router=self.router, pool_keepalive=self.pool_keepalive
            )
        return self._full

    def _make_watcher(self, path: Path) -> ConfigWatcher:
        return ConfigWatcher(
            path,
            apply=lambda cfg, source: self.apply_config(cfg, source=source),
            report_error=self.record_failure,
            interval=self.poll_interval,
        )

    async def _load_initial(self) -> None:
        config = self._initial_config
        source = "init"
        if self.config_path is not None:
            self._watcher = self._make_watcher(self.config_path)
            source = f"file:{self.config_path}"
            try:
                config, _ = self._watcher.read()
            except SidecarConfigError as exc:
                self.record_failure(source, exc.detail)
                if config is None:
                    return
                source = "init"
        if config is None:
            return
        # Even if it cannot be applied (a port in use), its admin listener is the one to serve.
        self._admin_fallback = config.admin
        with contextlib.suppress(ConfigApplyError):
            await self.apply_config(config, source=source)

    # ------------------------------------------------------------------------------------------------
    # Applying a config
    # ------------------------------------------------------------------------------------------------

    async def _apply(self, config: PlainSidecarConfig, source: str) -> bool:
        current = self.config
        if current is not None and config.generation and config.generation < current.generation:
            raise StaleConfigError(
                f"generation {config.generation} is older than the running generation {current.generation}"
            )
        if current is not None and config == current:
            self._record_success(source, changed=False)
            return False
        try:
            change = await self._listeners.prepare(config)
        except OSError as exc:
            raise ConfigApplyError(f"cannot listen: {exc}") from exc
        # Commit: nothing below can fail.
        change.commit()
        names = {up.name for up in config.upstreams}
        for name in list(self._live):
            if name not in names:
                del self._live[name]
        upstreams: dict[str, LiveUpstream] = {}
        for up_cfg in config.upstreams:
            parts = self._live.get(up_cfg.name)
            if parts is None:
                parts = LiveParts.create(
                    up_cfg, clock=self.clock, on_transition=self._transition_sink(up_cfg.name)
                )
                self._live[up_cfg.name] = parts
            else:
                parts.update(up_cfg, clock=self.clock)
            upstreams[up_cfg.name] = LiveUpstream(up_cfg, parts)
        self.routes = RouteTable.build(config, upstreams)
        self.config = config
        if self._admin.port is not None and self._admin_bound != config.admin:
            try:
                await self._bind_admin(config.admin)
            except OSError as exc:
                config_log.error("cannot move the admin listener: %s", exc)
        self._record_success(source, changed=True)
        return True

    async def _bind_admin(self, admin: PlainAdminConfig) -> None:
        old_port, old_bound = self._admin.port, self._admin_bound
        await self._admin.stop()
        try:
            await self._admin.start(admin.address, admin.port)
        except OSError:
            if old_port is not None and old_bound is not None:
                await self._admin.start(old_bound.address, old_port)
            raise
        self._admin_bound = admin

    def _forward_proxy_address(self) -> tuple[str, int] | None:
        return self._listeners.address("forward")

    # ------------------------------------------------------------------------------------------------
    # Request handlers of the data-plane listeners
    # ------------------------------------------------------------------------------------------------

    def _handler(self, key: ListenerKey) -> Handler:
        return self._full_path().handler(key[0], key[1])

    @property
    def forward_proxy(self) -> ForwardRouter:
        """The forward proxy's routing and counters (both paths share them)."""
        return self.router

    # ------------------------------------------------------------------------------------------------
    # Transitions and reload bookkeeping
    # ------------------------------------------------------------------------------------------------

    def _transition_sink(self, name: str) -> Callable[[Transition], None]:
        def on_transition(t: Transition) -> None:
            parts = self._live.get(name)
            if parts is not None:
                event = TransitionEvent.of(
                    t,
                    upstream=name,
                    policy=parts.policy,
                    clock=self.clock,
                    config_hash=self.routes.config_hash,
                )
                publish_transition(event, parts.stats, self.transition_listeners)

        return on_transition

    def _record_success(self, source: str, *, changed: bool) -> None:
        self.reloads.succeeded(source, self.routes, changed=changed)

    def record_failure(self, source: str, error: str) -> None:
        self.reloads.failed(source, error, running=self.routes.config_hash)

    @property
    def last_reload(self) -> ReloadStatus | None:
        return self.reloads.last

    @property
    def last_reload_error(self) -> ReloadStatus | None:
        return self.reloads.last_error

    @property
    def reload_counters(self) -> ReloadCounters:
        return self.reloads.counters


@contextlib.asynccontextmanager
async def run_sidecar(
    config_path: str | Path | None = None,
    *,
    config: PlainSidecarConfig | None = None,
    require_config: bool = True,
    **options: Any,
) -> AsyncIterator[Sidecar]:
    """Start a sidecar in this event loop for the duration of the block.

    With `require_config` (the default) a config that cannot be loaded raises `ConfigApplyError`
    instead of starting an unready sidecar. `options` go to `Sidecar` (poll_interval,
    drain_seconds, idle_timeout, admin_token, clock, config_api).
    """
    sidecar = Sidecar(config_path=config_path, config=config, **options)
    await sidecar.start()
    try:
        if require_config and not sidecar.ready:
            error = sidecar.last_reload_error.error if sidecar.last_reload_error else "no config"
            raise ConfigApplyError(error)
        yield sidecar
    finally:
        await sidecar.stop()
