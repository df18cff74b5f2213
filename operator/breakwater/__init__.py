"""Breakwater: circuit breaking for any HTTP client pod, driven by a Kubernetes operator."""

__version__ = "0.1.0"
