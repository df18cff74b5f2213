"""The circuit-breaker state machine: pure, no I/O, time passed in.

Everything the proxy needs is re-exported here; see `breakwater.breaker.engine` for the semantics.
"""

from breakwater.breaker.engine import ADMITTED, OBSERVED_REJECT, REJECTED, TRIAL, Breaker
from breakwater.breaker.events import BreakerSnapshot, Outcome, Reason, Transition
from breakwater.breaker.settings import BreakerSettings, InvalidBreakerSettings, Mode, State, WindowKind

__all__ = [
    "ADMITTED",
    "OBSERVED_REJECT",
    "REJECTED",
    "TRIAL",
    "Breaker",
    "BreakerSettings",
    "BreakerSnapshot",
    "InvalidBreakerSettings",
    "Mode",
    "Outcome",
    "Reason",
    "State",
    "Transition",
    "WindowKind",
]
