"""The only place, besides kopf itself, that talks to the Kubernetes API."""
