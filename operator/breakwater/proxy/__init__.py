"""The circuit-breaker sidecar proxy: a fast path on asyncio protocols, the aiohttp full path behind it.

Public surface: `Sidecar` / `run_sidecar` (start one in-process), `TransitionEvent` and the
``transition_listeners`` hook. `breakwater proxy` runs `breakwater.proxy.main`.
"""

from breakwater.proxy.reload import ConfigApplyError, ReloadStatus, StaleConfigError
from breakwater.proxy.sidecar import ADMIN_TOKEN_ENV, Sidecar, run_sidecar
from breakwater.proxy.stats import TransitionEvent, TransitionListener

__all__ = [
    "ADMIN_TOKEN_ENV",
    "ConfigApplyError",
    "ReloadStatus",
    "Sidecar",
    "StaleConfigError",
    "TransitionEvent",
    "TransitionListener",
    "run_sidecar",
]
