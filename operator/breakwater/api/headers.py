"""The HTTP headers the proxy owns: the API refuses them in a static fallback, the proxy drops them."""

from __future__ import annotations

__all__ = ["HEADER_NAME_PATTERN", "HOP_BY_HOP", "MANAGED_HEADERS"]

HEADER_NAME_PATTERN = r"^[A-Za-z0-9-]+$"
HOP_BY_HOP = (
    "connection",
    "keep-alive",
    "proxy-connection",
    "te",
    "trailer",
    "transfer-encoding",
    "upgrade",
    "proxy-authorization",
    "proxy-authenticate",
    "proxy-authentication-info",
)
"""Hop-by-hop headers (RFC 9110 section 7.6.1, and the proxy ones): the proxy never forwards them."""
MANAGED_HEADERS = (*HOP_BY_HOP, "content-length")
"""Headers the proxy owns (hop-by-hop and framing): a static fallback may not set them."""
