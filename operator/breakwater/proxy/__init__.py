"""The aiohttp sidecar proxy that enforces breakers on each upstream.

Public surface: `Sidecar` / `run_sidecar` (start one in-process), `TransitionEvent` and the
``transition_listeners`` hook, the app keys (`SIDECAR`, `CLIENT_SESSION`, `TRANSITION_LISTENERS`).
`breakwater proxy` runs `breakwater.proxy.main`.
"""

from breakwater.proxy.sidecar import (
    ADMIN_TOKEN_ENV,
    CLIENT_SESSION,
    SIDECAR,
    TRANSITION_LISTENERS,
    ConfigApplyError,
    ReloadStatus,
    Sidecar,
    StaleConfigError,
    run_sidecar,
)
from breakwater.proxy.stats import TransitionEvent, TransitionListener

__all__ = [
    "ADMIN_TOKEN_ENV",
    "CLIENT_SESSION",
    "SIDECAR",
    "TRANSITION_LISTENERS",
    "ConfigApplyError",
    "ReloadStatus",
    "Sidecar",
    "StaleConfigError",
    "TransitionEvent",
    "TransitionListener",
    "run_sidecar",
]
