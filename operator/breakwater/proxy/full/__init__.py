"""The full path: aiohttp server and client, for what the fast path hands over (or all, when it is off)."""
