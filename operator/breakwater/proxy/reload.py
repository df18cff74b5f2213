"""Watching the config file (the mounted ConfigMap) and feeding changes to the sidecar.

The file is polled: ``stat`` every interval (cheap), and the content is read and hashed only when the
stat changed, or every `recheck_every` polls anyway (a rewrite within one mtime tick, same size).
Kubernetes swaps a ConfigMap mount through a ``..data`` symlink; ``stat`` follows it, so the swap shows.
The same content is never applied twice, and an invalid file is reported once, not every second.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import os
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from breakwater.api.plain.parse import parse_sidecar_config
from breakwater.api.plain.sidecar import PlainSidecarConfig, SidecarConfigError
from breakwater.errors import ConfigNotApplied
from breakwater.proxy.logs import CONFIG_CHANNEL
from breakwater.proxy.upstream import RouteTable

__all__ = [
    "ConfigApplyError",
    "ConfigWatcher",
    "ReloadCounters",
    "ReloadHistory",
    "ReloadStatus",
    "StaleConfigError",
]


class ConfigApplyError(ConfigNotApplied):
    """A valid config whose listeners could not be bound here (a port in use)."""


class StaleConfigError(ConfigNotApplied):
    """A config older (lower ``generation``) than the one running."""


@dataclass(slots=True)
class ReloadCounters:
    success: int = 0
    failure: int = 0


log = logging.getLogger(CONFIG_CHANNEL)


class ConfigWatcher:
    def __init__(
        self,
        path: str | Path,
        *,
        apply: Callable[[PlainSidecarConfig, str], Awaitable[object]],
        report_error: Callable[[str, str], None],
        interval: float = 1.0,
        recheck_every: int = 10,
    ) -> None:
        self.path = Path(path)
        self._apply = apply
        self._report_error = report_error
        self.interval = interval
        self._recheck_every = max(1, recheck_every)
        self._stat: tuple[int, int, int] | None = None
        self._digest: str | None = None
        self._polls = 0

    def _stat_key(self) -> tuple[int, int, int] | None:
        try:
            st = os.stat(self.path)
        except OSError:
            return None
        return (st.st_mtime_ns, st.st_size, st.st_ino)

    def read(self) -> tuple[PlainSidecarConfig, str]:
        """Read and parse the file now; remembers its digest. Raises `SidecarConfigError`."""
        self._stat = self._stat_key()
        try:
            raw = self.path.read_bytes()
        except OSError as exc:
            self._digest = None
            raise SidecarConfigError(f"cannot read: {exc.strerror or exc}", source=str(self.path)) from exc
        self._digest = hashlib.sha256(raw).hexdigest()
        return parse_sidecar_config(raw, source=str(self.path)), self._digest

    async def check(self) -> bool:
        """Look once; apply the file if its content changed. True when something was applied."""
        self._polls += 1
        key = self._stat_key()
        if key == self._stat and self._polls % self._recheck_every:
            return False
        self._stat = key
        if key is None:
            if self._digest != "missing":
                self._digest = "missing"
                self._report_error(str(self.path), "the config file is missing")
            return False
        try:
            raw = self.path.read_bytes()
        except OSError as exc:
            self._report_error(str(self.path), f"cannot read: {exc.strerror or exc}")
            return False
        digest = hashlib.sha256(raw).hexdigest()
        if digest == self._digest:
            return False
        self._digest = digest
        try:
            config = parse_sidecar_config(raw, source=str(self.path))
        except SidecarConfigError as exc:
            self._report_error(str(self.path), exc.detail)
            return False
        try:
            await self._apply(config, f"file:{self.path}")
        except StaleConfigError as exc:  # the mounted copy lags what the operator pushed: not an error
            log.info("not applying %s: %s", self.path, exc)
            return False
        except ConfigApplyError:  # recorded (on /readyz and /stats) and logged by the sidecar
            return False
        except Exception as exc:  # a defect: said once per content, and the running config stays
            log.exception("applying %s failed", self.path)
            self._report_error(str(self.path), f"internal error: {type(exc).__name__}: {exc}")
            return False
        return True

    async def run(self) -> None:
        """Poll until cancelled."""
        while True:
            await asyncio.sleep(self.interval)
            try:
                await self.check()
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("config watcher failed; retrying")


@dataclass(frozen=True, slots=True)
class ReloadStatus:
    """The outcome of one config load attempt, as /readyz and /stats show it."""

    ok: bool
    source: str
    at: float
    config_hash: str = ""
    error: str = ""

    def to_json(self) -> dict[str, Any]:
        doc: dict[str, Any] = {"ok": self.ok, "source": self.source, "at": self.at}
        if self.config_hash:
            doc["configHash"] = self.config_hash
        if self.error:
            doc["error"] = self.error
        return doc


@dataclass
class ReloadHistory:
    """Every config load attempt counted, the last one and the last failure kept, and logged."""

    counters: ReloadCounters = field(default_factory=ReloadCounters)
    last: ReloadStatus | None = None
    last_error: ReloadStatus | None = None

    def succeeded(self, source: str, routes: RouteTable, *, changed: bool) -> None:
        self.counters.success += 1
        self.last = ReloadStatus(ok=True, source=source, at=time.time(), config_hash=routes.config_hash)
        self.last_error = None
        if changed:
            log.info(
                "config applied",
                extra={
                    "fields": {
                        "source": source,
                        "config_hash": routes.config_hash,
                        "generation": routes.config.generation,
                        "upstreams": len(routes.by_name),
                    }
                },
            )

    def failed(self, source: str, error: str, *, running: str) -> None:
        self.counters.failure += 1
        status = ReloadStatus(ok=False, source=source, at=time.time(), error=error)
        self.last = self.last_error = status
        log.error(
            "config rejected, %s: %s",
            "keeping the last good one" if running else "and none is running yet",
            error,
            extra={"fields": {"source": source, "running_hash": running or None}},
        )
