"""Upstream faults: every one gets the right answer in bounded time, with the counters and state right."""

from __future__ import annotations

import asyncio
import gc

import aiohttp
import pytest

from breakwater.breaker import State
from breakwater.proxy import Sidecar
from tests.unit.proxy.helpers import (
    FaultyUpstream,
    SidecarFactory,
    free_port,
    rss_bytes,
    sidecar_doc,
    start_raw_server,
    upstream_doc,
)

pytestmark = pytest.mark.timeout(60)


async def _start(start_sidecar: SidecarFactory, port: int, **overrides: object) -> tuple[Sidecar, str]:
    sidecar = await start_sidecar(sidecar_doc(upstream_doc("up", port, **overrides)))
    return sidecar, f"http://127.0.0.1:{sidecar.listen_port('up')}"


async def _timed_get(client: aiohttp.ClientSession, url: str) -> tuple[int, dict[str, str], bytes, float]:
    loop = asyncio.get_running_loop()
    start = loop.time()
    async with client.get(url) as resp:
        body = await resp.read()
        return resp.status, dict(resp.headers), body, loop.time() - start


async def test_a_burst_of_5xx_trips_the_breaker_and_then_requests_are_rejected_without_reaching_it(
    start_sidecar: SidecarFactory, upstream: FaultyUpstream, client: aiohttp.ClientSession
) -> None:
    sidecar, base = await _start(
        start_sidecar, upstream.port, breaker={"consecutiveFailures": 5, "openSeconds": 30, "jitter": 0}
    )
    upstream.failing = True
    for _ in range(5):
        status, headers, _, _ = await _timed_get(client, f"{base}/flaky")
        assert status == 503
        assert "x-breakwater" not in headers  # the upstream's own 503 passes through
    status, headers, body, elapsed = await _timed_get(client, f"{base}/flaky")
    assert status == 503
    assert headers["x-breakwater"] == "open"
    assert 29 <= int(headers["Retry-After"]) <= 30
    assert b"circuit open" in body
    assert elapsed < 0.5
    assert upstream.hits["/flaky"] == 5
    up = sidecar.upstream("up")
    assert up.breaker.state is State.OPEN
    assert up.stats.failures == 5
    assert up.stats.rejected == 1
    snap = up.breaker.snapshot()
    assert (snap.calls, snap.failures, snap.rejections, snap.trips) == (5, 5, 1, 1)


async def test_an_open_breaker_lets_trials_through_after_the_open_duration_and_closes_on_success(
    start_sidecar: SidecarFactory, upstream: FaultyUpstream, client: aiohttp.ClientSession
) -> None:
    sidecar, base = await _start(
        start_sidecar,
        upstream.port,
        breaker={"consecutiveFailures": 2, "openSeconds": 0.2, "jitter": 0, "halfOpenSuccessesToClose": 2},
    )
    upstream.failing = True
    for _ in range(2):
        await _timed_get(client, f"{base}/flaky")
    assert sidecar.upstream("up").breaker.state is State.OPEN
    upstream.failing = False
    await asyncio.sleep(0.25)
    for _ in range(2):
        status, _, body, _ = await _timed_get(client, f"{base}/flaky")
        assert (status, body) == (200, b"ok")
    assert sidecar.upstream("up").breaker.state is State.CLOSED
    reasons = [(e.from_state, e.to_state, e.reason) for e in sidecar.upstream("up").stats.last_transitions]
    assert reasons == [
        ("Closed", "Open", "ConsecutiveFailures"),
        ("Open", "HalfOpen", "OpenTimeoutElapsed"),
        ("HalfOpen", "Closed", "TrialsSucceeded"),
    ]


async def test_connection_refused_answers_502_connect_error_and_counts_as_a_failure(
    start_sidecar: SidecarFactory, client: aiohttp.ClientSession
) -> None:
    sidecar, base = await _start(start_sidecar, free_port(), breaker={"consecutiveFailures": 3})
    for _ in range(3):
        status, headers, _, elapsed = await _timed_get(client, f"{base}/anything")
        assert status == 502
        assert headers["x-breakwater"] == "connect-error"
        assert elapsed < 1
    status, headers, _, _ = await _timed_get(client, f"{base}/anything")
    assert (status, headers["x-breakwater"]) == (503, "open")
    up = sidecar.upstream("up")
    assert up.stats.failures == 3
    assert up.breaker.snapshot().failures == 3


async def test_a_reset_in_the_middle_of_a_streamed_body_breaks_the_client_connection_and_counts(
    start_sidecar: SidecarFactory, upstream: FaultyUpstream, client: aiohttp.ClientSession
) -> None:
    sidecar, base = await _start(start_sidecar, upstream.port)
    async with client.get(f"{base}/reset") as resp:
        assert resp.status == 200  # the headers were already on their way
        with pytest.raises(aiohttp.ClientPayloadError):
            await resp.read()
    up = sidecar.upstream("up")
    await asyncio.sleep(0.05)
    assert up.stats.failures == 1
    assert up.breaker.snapshot().failures == 1
    status, _, body, _ = await _timed_get(client, f"{base}/ok")  # the proxy is fine afterwards
    assert (status, body) == (200, b"ok")


async def test_a_reset_before_a_small_body_is_complete_answers_502_or_breaks_the_answer(
    start_sidecar: SidecarFactory, upstream: FaultyUpstream, client: aiohttp.ClientSession
) -> None:
    sidecar, base = await _start(start_sidecar, upstream.port)
    if start_sidecar.data_path == "full":  # the full path reads a small body whole before answering
        status, headers, _, _ = await _timed_get(client, f"{base}/reset-small")
        assert (status, headers["x-breakwater"]) == (502, "reset")
    else:  # the fast path streams it: the client sees the answer break off, never a short "complete" one
        with pytest.raises(aiohttp.ClientPayloadError):
            await _timed_get(client, f"{base}/reset-small")
    assert sidecar.upstream("up").stats.failures == 1


async def test_a_response_slower_than_the_timeout_answers_504_in_about_the_timeout(
    start_sidecar: SidecarFactory, upstream: FaultyUpstream, client: aiohttp.ClientSession
) -> None:
    sidecar, base = await _start(start_sidecar, upstream.port, timeoutSeconds=0.3)
    status, headers, _, elapsed = await _timed_get(client, f"{base}/slow/3")
    assert (status, headers["x-breakwater"]) == (504, "timeout")
    assert 0.25 < elapsed < 1.5
    assert sidecar.upstream("up").stats.failures == 1
    assert sidecar.upstream("up").breaker.snapshot().failures == 1


async def test_a_hanging_upstream_is_cut_off_at_the_timeout(
    start_sidecar: SidecarFactory, upstream: FaultyUpstream, client: aiohttp.ClientSession
) -> None:
    sidecar, base = await _start(start_sidecar, upstream.port, timeoutSeconds=0.2)
    results = await asyncio.gather(*(_timed_get(client, f"{base}/hang") for _ in range(20)))
    assert {(status, headers["x-breakwater"]) for status, headers, _, _ in results} == {(504, "timeout")}
    assert max(elapsed for *_, elapsed in results) < 1.5
    assert sidecar.upstream("up").stats.failures == 20
    assert sidecar.upstream("up").stats.in_flight == 0


async def test_timeouts_that_do_not_count_as_failures_leave_the_breaker_alone(
    start_sidecar: SidecarFactory, upstream: FaultyUpstream, client: aiohttp.ClientSession
) -> None:
    sidecar, base = await _start(
        start_sidecar,
        upstream.port,
        timeoutSeconds=0.1,
        failures={"timeouts": False},
        breaker={"consecutiveFailures": 1},
    )
    for _ in range(3):
        status, _, _, _ = await _timed_get(client, f"{base}/hang")
        assert status == 504
    snap = sidecar.upstream("up").breaker.snapshot()
    assert snap.state is State.CLOSED
    assert (snap.failures, snap.ignored) == (0, 3)


async def test_a_50_mib_body_streams_through_without_the_proxy_holding_it(
    start_sidecar: SidecarFactory, upstream: FaultyUpstream, client: aiohttp.ClientSession
) -> None:
    sidecar, base = await _start(start_sidecar, upstream.port, timeoutSeconds=5)
    gc.collect()
    before = rss_bytes()
    peak = before
    received = 0
    async with client.get(f"{base}/big/50") as resp:
        assert resp.status == 200
        assert resp.headers["Content-Length"] == str(50 * 1024 * 1024)
        async for chunk in resp.content.iter_chunked(256 * 1024):
            received += len(chunk)
            peak = max(peak, rss_bytes())
    assert received == 50 * 1024 * 1024
    # upstream, proxy and client all live in this process: none of them may hold the body
    assert peak - before < 20 * 1024 * 1024, f"RSS grew by {(peak - before) / 2**20:.1f} MiB"
    assert sidecar.upstream("up").stats.successes == 1


async def test_a_malformed_upstream_response_answers_502_and_counts_as_a_failure(
    start_sidecar: SidecarFactory, client: aiohttp.ClientSession
) -> None:
    server, port = await start_raw_server(b"HTTP/1.1 abc nonsense\r\nX: y\r\n\r\n")
    try:
        sidecar, base = await _start(start_sidecar, port)
        status, headers, _, elapsed = await _timed_get(client, f"{base}/x")
        assert (status, headers["x-breakwater"]) == (502, "reset")
        assert elapsed < 1
        assert sidecar.upstream("up").stats.failures == 1
    finally:
        server.close()


async def test_an_upstream_that_closes_without_answering_counts_as_a_reset(
    start_sidecar: SidecarFactory, client: aiohttp.ClientSession
) -> None:
    server, port = await start_raw_server(b"")
    try:
        sidecar, base = await _start(start_sidecar, port, retry={"attempts": 1})
        status, headers, _, _ = await _timed_get(client, f"{base}/x")
        assert (status, headers["x-breakwater"]) == (502, "reset")
        assert sidecar.upstream("up").breaker.snapshot().failures == 1
    finally:
        server.close()


async def test_observe_mode_counts_what_it_would_reject_but_lets_everything_through(
    start_sidecar: SidecarFactory, upstream: FaultyUpstream, client: aiohttp.ClientSession
) -> None:
    sidecar, base = await _start(
        start_sidecar, upstream.port, mode="Observe", breaker={"consecutiveFailures": 2, "openSeconds": 30}
    )
    upstream.failing = True
    for _ in range(6):
        status, headers, _, _ = await _timed_get(client, f"{base}/flaky")
        assert status == 503
        assert "x-breakwater" not in headers
    assert upstream.hits["/flaky"] == 6
    snap = sidecar.upstream("up").breaker.snapshot()
    assert snap.state is State.OPEN
    assert snap.would_reject == 4
    assert snap.rejections == 0


async def test_force_open_rejects_everything_and_disabled_rejects_nothing(
    start_sidecar: SidecarFactory, upstream: FaultyUpstream, client: aiohttp.ClientSession
) -> None:
    sidecar = await start_sidecar(
        sidecar_doc(
            upstream_doc("forced", upstream.port, mode="ForceOpen"),
            upstream_doc("off", upstream.port, mode="Disabled", breaker={"consecutiveFailures": 1}),
        )
    )
    forced = f"http://127.0.0.1:{sidecar.listen_port('forced')}"
    off = f"http://127.0.0.1:{sidecar.listen_port('off')}"
    upstream.failing = True
    for _ in range(3):
        status, headers, _, _ = await _timed_get(client, f"{forced}/ok")
        assert (status, headers["x-breakwater"]) == (503, "open")
        status, headers, _, _ = await _timed_get(client, f"{off}/flaky")
        assert status == 503
        assert "x-breakwater" not in headers
    assert upstream.hits["/ok"] == 0
    assert upstream.hits["/flaky"] == 3


async def test_a_client_that_goes_away_mid_body_is_not_held_against_the_upstream(
    start_sidecar: SidecarFactory, upstream: FaultyUpstream
) -> None:
    sidecar, base = await _start(start_sidecar, upstream.port, timeoutSeconds=5)
    port = int(base.rsplit(":", 1)[1])
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(b"GET /big/20 HTTP/1.1\r\nHost: x\r\n\r\n")
    await writer.drain()
    await reader.readexactly(100_000)
    writer.transport.abort()
    up = sidecar.upstream("up")
    for _ in range(100):
        if up.stats.in_flight == 0:
            break
        await asyncio.sleep(0.05)
    assert up.stats.in_flight == 0
    assert up.stats.client_errors == 1
    snap = up.breaker.snapshot()
    assert (snap.failures, snap.ignored) == (0, 1)


async def test_the_timeout_bounds_the_whole_call_retries_included(
    start_sidecar: SidecarFactory, upstream: FaultyUpstream, client: aiohttp.ClientSession
) -> None:
    _, base = await _start(
        start_sidecar,
        upstream.port,
        timeoutSeconds=1.0,
        retry={"attempts": 3, "perTryTimeoutSeconds": 0.4, "budgetPercent": 100, "retryOn": ["timeout"]},
    )
    for _ in range(10):  # requests the retry budget can be spent on
        await _timed_get(client, f"{base}/ok")
    status, headers, _, elapsed = await _timed_get(client, f"{base}/slow/5")
    assert (status, headers["x-breakwater"]) == (504, "timeout")
    assert 0.9 < elapsed < 1.3
    assert upstream.hits["/slow/5"] == 3  # 0.4 + backoff + 0.4 + backoff + what is left of 1 s


async def test_an_answer_that_trickles_past_the_timeout_is_cut_at_the_deadline(
    start_sidecar: SidecarFactory, upstream: FaultyUpstream, client: aiohttp.ClientSession
) -> None:
    sidecar, base = await _start(start_sidecar, upstream.port, timeoutSeconds=0.5)
    loop = asyncio.get_running_loop()
    start = loop.time()
    with pytest.raises(aiohttp.ClientPayloadError):  # cut: the client sees it broken, not complete
        await _timed_get(client, f"{base}/trickle/3")
    assert loop.time() - start < 1.2
    up = sidecar.upstream("up")
    assert up.stats.failures == 1
    assert up.breaker.snapshot().failures == 1
