"""A local Kubernetes control plane for tests and the demo (like kopf.testing, for us)."""
