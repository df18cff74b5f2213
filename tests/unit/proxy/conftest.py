"""Fixtures for the sidecar tests (helpers in `helpers.py`); everything binds and talks to 127.0.0.1 only."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
import pytest

from tests.unit.proxy.helpers import FaultyUpstream, SidecarFactory


@pytest.fixture
async def upstream() -> AsyncIterator[FaultyUpstream]:
    server = FaultyUpstream()
    await server.start()
    try:
        yield server
    finally:
        await server.stop()


@pytest.fixture(params=["fast", "full"])
async def start_sidecar(tmp_path: Path, request: pytest.FixtureRequest) -> AsyncIterator[SidecarFactory]:
    """Starts sidecars whose data plane is the fast path, or (``full``) the full path alone: every
    data-plane test runs on both."""
    async with contextlib.AsyncExitStack() as stack:
        yield SidecarFactory(tmp_path, stack, path=request.param)


@pytest.fixture
async def client() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession(trust_env=False, timeout=aiohttp.ClientTimeout(total=30)) as session:
        yield session
