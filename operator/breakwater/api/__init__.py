"""The CircuitBreakerPolicy API (pydantic models) and the sidecar configuration schema."""
