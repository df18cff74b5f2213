"""kopf handlers: policy reconcile, pod mutation webhook, health aggregation, events."""
