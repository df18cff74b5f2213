"""The fast path: plain HTTP/1.1 on asyncio protocols and httptools, no aiohttp (see `server.py`)."""
