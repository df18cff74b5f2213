"""The operator's probes as a real server on loopback: readiness says what is missing until nothing is,
liveness answers while the event loop runs and stops answering when it is wedged."""

from __future__ import annotations

import asyncio
import threading
import time
import urllib.error
import urllib.request

import pytest

from breakwater.controller.probes import ProbeServer
from breakwater.testing.controlplane import free_port

pytestmark = pytest.mark.timeout(30)


def get(url: str, *, timeout: float = 5.0) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(url, timeout=timeout) as resp:
            return resp.status, resp.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode()


async def test_readiness_names_what_is_missing_and_liveness_follows_the_event_loop() -> None:
    missing = ["policies not listed", "pods not listed"]
    probes = ProbeServer(lambda: list(missing))
    port = free_port()
    await probes.start(host="127.0.0.1", port=port)
    base = f"http://127.0.0.1:{port}"
    try:
        status, text = await asyncio.to_thread(get, f"{base}/readyz")
        assert (status, text) == (503, "not ready: policies not listed; pods not listed\n")
        missing.clear()
        assert await asyncio.to_thread(get, f"{base}/readyz") == (200, "ready\n")
        assert await asyncio.to_thread(get, f"{base}/healthz") == (200, "ok\n")

        answered: list[object] = []

        def probe_while_wedged() -> None:
            try:
                answered.append(get(f"{base}/healthz", timeout=0.5))
            except OSError as exc:  # a timeout: nobody answers
                answered.append(exc)

        prober = threading.Thread(target=probe_while_wedged)
        prober.start()
        time.sleep(1.5)  # noqa: ASYNC251 (the point: the event loop blocked, a wedged operator)
        prober.join()  # the loop stays wedged until the probe has given up
        assert len(answered) == 1, answered
        assert isinstance(answered[0], OSError), answered
        assert await asyncio.to_thread(get, f"{base}/healthz") == (200, "ok\n")  # alive again
    finally:
        await probes.stop()
