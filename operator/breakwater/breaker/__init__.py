"""The circuit-breaker state machine: pure, no I/O, time passed in."""
