"""Events on a policy, posted by the status loop (outside kopf's handlers, where kopf.event cannot post)."""

from __future__ import annotations

import datetime
import socket
from typing import Any

COMPONENT = "breakwater-operator"


def event_body(*, involved: dict[str, Any], kind: str, reason: str, message: str) -> dict[str, Any]:
    """A core/v1 Event about `involved` (a body with apiVersion, kind and metadata name/namespace/uid)."""
    meta = involved.get("metadata") or {}
    namespace = str(meta.get("namespace") or "default")
    now = datetime.datetime.now(datetime.UTC)
    body = {
        "metadata": {"generateName": f"{meta.get('name')}.", "namespace": namespace},
        "involvedObject": {
            "apiVersion": involved.get("apiVersion"),
            "kind": involved.get("kind"),
            "name": meta.get("name"),
            "namespace": namespace,
            "uid": meta.get("uid"),
        },
        "type": kind,
        "reason": reason,
        "message": message[:1024],
        "firstTimestamp": now.strftime("%Y-%m-%dT%H:%M:%SZ"),
        "lastTimestamp": now.strftime("%Y-%m-%dT%H:%M:%SZ"),
        "count": 1,
        "source": {"component": COMPONENT},
        "reportingComponent": COMPONENT,
        "reportingInstance": socket.gethostname()[:128],
    }
    return body
