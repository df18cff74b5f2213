"""The aiohttp sidecar proxy that enforces breakers on each upstream."""
