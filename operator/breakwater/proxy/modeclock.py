"""Which mode a breaker runs, and the clock that ends an override on time without the operator.

The operator renders an override as `mode` (the override's) with `modeUntil` (wall-clock seconds) and
`modeAfter` (the spec's mode); a fleet quorum as `fleetOpen`. Both are decided here, outside the request
path:

- `mode_at`: the override's mode until `modeUntil`, `modeAfter` from then on, by this pod's own clock,
  so an override ends on time even while the operator is down (and a sidecar started after the end
  never enters it).
- `applied_mode`: at each config apply, `fleetOpen` holds a breaker open (ForceOpen) unless it tripped
  on its own: a breaker already Open or HalfOpen keeps running (its trials probe the upstream), and one
  that closes after that is not held again (the hold is decided at apply time only).
- `ModeClock`: a task that, at each `modeUntil`, moves the breakers still in the override's mode to
  `modeAfter` (one `reconfigure`, like a config change).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable

from breakwater.api.plain.sidecar import PlainUpstreamConfig
from breakwater.breaker import Breaker, Mode, State

__all__ = ["ModeClock", "applied_mode", "mode_at"]

log = logging.getLogger(__name__)

MAX_SLEEP_SECONDS = 1.0


def mode_at(config: PlainUpstreamConfig, now: float) -> Mode:
    """The mode `config` asks for at wall-clock time `now`."""
    if config.mode_until is not None and now >= config.mode_until:
        return config.mode_after or config.mode
    return config.mode


def applied_mode(config: PlainUpstreamConfig, breaker: Breaker | None, now: float) -> Mode:
    """The mode to give `breaker` (None: a new one) when `config` is applied at `now`."""
    mode = mode_at(config, now)
    if not config.fleet_open or mode is not Mode.ENFORCE:
        return mode
    if breaker is None or breaker.mode is Mode.FORCE_OPEN or breaker.state is State.CLOSED:
        return Mode.FORCE_OPEN  # held open by the fleet quorum
    return Mode.ENFORCE  # tripped on its own: keeps probing


class ModeClock:
    """Ends overrides at `modeUntil`: `upstreams` returns the live (config, breaker) pairs."""

    def __init__(
        self,
        upstreams: Callable[[], list[tuple[PlainUpstreamConfig, Breaker]]],
        *,
        wall: Callable[[], float] = time.time,
    ) -> None:
        self._upstreams = upstreams
        self._wall = wall
        self._task: asyncio.Task[None] | None = None

    def tick(self) -> float:
        """Apply every override end that is due; returns the seconds until the next one (capped)."""
        now = self._wall()
        wait = MAX_SLEEP_SECONDS
        for config, breaker in self._upstreams():
            if config.mode_until is None:
                continue
            if now >= config.mode_until:
                after = config.mode_after or config.mode
                if breaker.mode is config.mode and after is not config.mode:
                    breaker.reconfigure(breaker.settings, after)
                    log.info("upstream %s: the override ended (%s -> %s)", config.name, config.mode, after)
            else:
                wait = min(wait, config.mode_until - now)
        return max(wait, 0.01)

    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._run(), name="breakwater-mode-clock")

    async def _run(self) -> None:
        while True:  # noqa: ASYNC110 - a deadline, not an event: nothing else would wake it
            await asyncio.sleep(self.tick())

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
