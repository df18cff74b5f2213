"""Pure functions: (pod, policies) -> sidecar patch; (policy) -> sidecar config."""
