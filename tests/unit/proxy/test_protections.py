"""Fallbacks (Static, Cached), the bulkhead and retries within their budget."""

from __future__ import annotations

import asyncio
from typing import Any

import aiohttp
import pytest

from breakwater.breaker import Mode, State
from breakwater.proxy import Sidecar
from tests.unit.proxy.helpers import FaultyUpstream, SidecarFactory, free_port, sidecar_doc, upstream_doc

pytestmark = pytest.mark.timeout(60)


async def _start(start_sidecar: SidecarFactory, port: int, **overrides: Any) -> tuple[Sidecar, str]:
    sidecar = await start_sidecar(sidecar_doc(upstream_doc("up", port, **overrides)))
    return sidecar, f"http://127.0.0.1:{sidecar.listen_port('up')}"


async def _get(
    client: aiohttp.ClientSession, url: str, method: str = "GET", **kwargs: Any
) -> tuple[int, Any, bytes]:
    async with client.request(method, url, **kwargs) as resp:
        return resp.status, resp.headers, await resp.read()


CACHED = {"kind": "Cached", "maxAgeSeconds": 60}
TRIP_ON_FIRST = {"consecutiveFailures": 1, "openSeconds": 60, "jitter": 0}


async def _trip(sidecar: Sidecar, upstream: FaultyUpstream, client: aiohttp.ClientSession, base: str) -> None:
    upstream.failing = True
    status, _, _ = await _get(client, f"{base}/cache/trip")
    assert status == 503
    assert sidecar.upstream("up").breaker.state is State.OPEN


# --------------------------------------------------------------------------------------------------
# Static fallback
# --------------------------------------------------------------------------------------------------


async def test_a_static_fallback_answers_a_rejection_with_its_status_headers_and_body(
    start_sidecar: SidecarFactory, upstream: FaultyUpstream, client: aiohttp.ClientSession
) -> None:
    sidecar, base = await _start(
        start_sidecar,
        upstream.port,
        mode="ForceOpen",
        breaker={"openSeconds": 7},
        fallback={
            "kind": "Static",
            "status": 200,
            "headers": {"Content-Type": "application/json", "X-Degraded": "1"},
            "body": '{"degraded":true}',
        },
    )
    status, headers, body = await _get(client, f"{base}/anything")
    assert (status, body) == (200, b'{"degraded":true}')
    assert headers["Content-Type"] == "application/json"
    assert headers["X-Degraded"] == "1"
    assert headers["x-breakwater"] == "fallback-static"
    assert headers["x-breakwater-reason"] == "open"
    assert headers["Retry-After"] == "7"
    assert upstream.hits.total() == 0
    assert sidecar.upstream("up").stats.fallback_static == 1


async def test_a_static_fallback_also_answers_an_upstream_that_cannot_be_reached(
    start_sidecar: SidecarFactory, client: aiohttp.ClientSession
) -> None:
    _, base = await _start(start_sidecar, free_port(), fallback={"kind": "Static", "body": "later"})
    status, headers, body = await _get(client, f"{base}/x")
    assert (status, body) == (503, b"later")
    assert headers["x-breakwater"] == "fallback-static"
    assert headers["x-breakwater-reason"] == "connect-error"
    assert "Retry-After" not in headers


# --------------------------------------------------------------------------------------------------
# Cached fallback
# --------------------------------------------------------------------------------------------------


async def test_a_cached_fallback_replays_the_last_good_answer_while_the_breaker_is_open(
    start_sidecar: SidecarFactory, upstream: FaultyUpstream, client: aiohttp.ClientSession
) -> None:
    sidecar, base = await _start(start_sidecar, upstream.port, fallback=CACHED, breaker=TRIP_ON_FIRST)
    assert (await _get(client, f"{base}/cache/a"))[2] == b"a#1"
    assert (await _get(client, f"{base}/cache/a"))[2] == b"a#2"  # within 1 s: not captured again
    await asyncio.sleep(1.05)
    assert (await _get(client, f"{base}/cache/a"))[2] == b"a#3"  # refreshed
    await _trip(sidecar, upstream, client, base)
    status, headers, body = await _get(client, f"{base}/cache/a")
    assert (status, body) == (200, b"a#3")
    assert headers["x-breakwater"] == "fallback-cached"
    assert headers["x-breakwater-reason"] == "open"
    assert int(headers["Age"]) >= 0
    status, headers, body = await _get(client, f"{base}/cache/a", method="HEAD")
    assert (status, body) == (200, b"")
    assert headers["x-breakwater"] == "fallback-cached"
    status, headers, _ = await _get(client, f"{base}/cache/never-seen")
    assert (status, headers["x-breakwater"]) == (503, "open")
    assert sidecar.upstream("up").stats.fallback_cached == 2


async def test_the_cache_honours_no_store_in_the_response_and_in_the_request(
    start_sidecar: SidecarFactory, upstream: FaultyUpstream, client: aiohttp.ClientSession
) -> None:
    sidecar, base = await _start(start_sidecar, upstream.port, fallback=CACHED, breaker=TRIP_ON_FIRST)
    await _get(client, f"{base}/cache/r?cc=no-store")
    await _get(client, f"{base}/cache/q", headers={"Cache-Control": "no-store"})
    await _get(client, f"{base}/cache/ok?cc=max-age%3D0")
    await _trip(sidecar, upstream, client, base)
    assert (await _get(client, f"{base}/cache/r?cc=no-store"))[1]["x-breakwater"] == "open"
    assert (await _get(client, f"{base}/cache/q"))[1]["x-breakwater"] == "open"
    assert (await _get(client, f"{base}/cache/ok?cc=max-age%3D0"))[1]["x-breakwater"] == "fallback-cached"


async def test_cached_answers_are_kept_apart_per_credentials(
    start_sidecar: SidecarFactory, upstream: FaultyUpstream, client: aiohttp.ClientSession
) -> None:
    sidecar, base = await _start(start_sidecar, upstream.port, fallback=CACHED, breaker=TRIP_ON_FIRST)
    await _get(client, f"{base}/cache/me", headers={"Authorization": "Bearer alice"})
    await _trip(sidecar, upstream, client, base)
    status, headers, body = await _get(client, f"{base}/cache/me", headers={"Authorization": "Bearer alice"})
    assert (status, body, headers["x-breakwater"]) == (200, b"me#1", "fallback-cached")
    status, headers, _ = await _get(client, f"{base}/cache/me", headers={"Authorization": "Bearer mallory"})
    assert (status, headers["x-breakwater"]) == (503, "open")
    status, headers, _ = await _get(client, f"{base}/cache/me")
    assert (status, headers["x-breakwater"]) == (503, "open")


async def _raw_get(port: int, path: str, *fields: str) -> tuple[int, dict[str, str], bytes]:
    """A GET with header fields exactly as given (names in any case), answered until the close."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        head = "".join(f"{field}\r\n" for field in (f"GET {path} HTTP/1.1", "Host: up", *fields))
        writer.write(f"{head}Connection: close\r\n\r\n".encode("latin-1"))
        answer = await asyncio.wait_for(reader.read(), 5)
    finally:
        writer.close()
    head_bytes, _, body = answer.partition(b"\r\n\r\n")
    status_line, *lines = head_bytes.decode("latin-1").split("\r\n")
    headers = {
        name.strip().lower(): value.strip() for name, _, value in (line.partition(":") for line in lines)
    }
    return int(status_line.split()[1]), headers, body


async def test_the_cache_finds_credentials_and_no_store_whatever_the_case_of_their_names(
    start_sidecar: SidecarFactory, upstream: FaultyUpstream, client: aiohttp.ClientSession
) -> None:
    # The fast path notes these fields while it parses a request (no second look at its header
    # lines): by the name as received, which may be spelled in any case.
    sidecar, base = await _start(start_sidecar, upstream.port, fallback=CACHED, breaker=TRIP_ON_FIRST)
    port = sidecar.listen_port("up")
    assert (await _raw_get(port, "/cache/me", "AUTHORIZATION: Bearer alice"))[2] == b"me#1"
    assert (await _raw_get(port, "/cache/jar", "cOOKIE: session=bob"))[2] == b"jar#1"
    assert (await _raw_get(port, "/cache/secret", "x-a: 1", "cache-CONTROL: private, NO-STORE"))[
        2
    ] == b"secret#1"
    await _trip(sidecar, upstream, client, base)

    def marker(answer: tuple[int, dict[str, str], bytes]) -> tuple[int, str, bytes]:
        return answer[0], answer[1]["x-breakwater"], answer[2] if answer[0] == 200 else b""

    assert marker(await _raw_get(port, "/cache/me", "authorization: Bearer alice")) == (
        200, "fallback-cached", b"me#1"
    )  # fmt: skip
    assert marker(await _raw_get(port, "/cache/me", "Authorization: Bearer mallory")) == (503, "open", b"")
    assert marker(await _raw_get(port, "/cache/me")) == (503, "open", b"")
    assert marker(await _raw_get(port, "/cache/jar", "Cookie: session=bob")) == (
        200,
        "fallback-cached",
        b"jar#1",
    )
    assert marker(await _raw_get(port, "/cache/jar", "COOKIE: session=eve")) == (503, "open", b"")
    assert marker(await _raw_get(port, "/cache/secret")) == (503, "open", b"")


async def test_credentials_that_connection_nominates_are_not_forwarded_so_they_do_not_key_the_cache(
    start_sidecar: SidecarFactory, upstream: FaultyUpstream, client: aiohttp.ClientSession
) -> None:
    # `Connection: Cookie` makes Cookie hop-by-hop: the upstream never sees it, so its answer is the
    # anonymous one, cached and replayed as such on both paths (keyed on what is forwarded).
    sidecar, base = await _start(start_sidecar, upstream.port, fallback=CACHED, breaker=TRIP_ON_FIRST)
    port = sidecar.listen_port("up")
    assert (await _raw_get(port, "/cache/jar", "Cookie: session=bob", "Connection: Cookie"))[2] == b"jar#1"
    await _trip(sidecar, upstream, client, base)
    status, headers, body = await _raw_get(port, "/cache/jar")
    assert (status, headers["x-breakwater"], body) == (200, "fallback-cached", b"jar#1")
    status, headers, body = await _raw_get(port, "/cache/jar", "Cookie: session=eve", "Connection: cookie")
    assert (status, headers["x-breakwater"], body) == (200, "fallback-cached", b"jar#1")
    status, headers, _ = await _raw_get(port, "/cache/jar", "Cookie: session=eve")
    assert (status, headers["x-breakwater"]) == (503, "open")


async def test_every_line_of_a_repeated_field_counts_for_the_cache_key_no_store_and_vary(
    start_sidecar: SidecarFactory, upstream: FaultyUpstream, client: aiohttp.ClientSession
) -> None:
    # Two users whose first Cookie line is the same (a preference) and whose session is on the
    # second must never share an answer; a no-store or a Vary name on a second line still counts.
    sidecar, base = await _start(start_sidecar, upstream.port, fallback=CACHED, breaker=TRIP_ON_FIRST)
    port = sidecar.listen_port("up")
    bob = ("Cookie: theme=dark", "Cookie: session=bob")
    assert (await _raw_get(port, "/cache/jar", *bob))[2] == b"jar#1"
    await _raw_get(port, "/cache/secret", "Cache-Control: max-age=0", "Cache-Control: no-store")
    varies = "/cache/v?vary=Accept&vary=Accept-Language"
    await _raw_get(port, varies, "Accept: text/plain", "Accept-Language: de")
    await _trip(sidecar, upstream, client, base)

    def marker(answer: tuple[int, dict[str, str], bytes]) -> tuple[int, str]:
        return answer[0], answer[1]["x-breakwater"]

    assert marker(await _raw_get(port, "/cache/jar", *bob)) == (200, "fallback-cached")
    assert marker(await _raw_get(port, "/cache/jar", "Cookie: theme=dark", "Cookie: session=eve")) == (
        503,
        "open",
    )
    assert marker(await _raw_get(port, "/cache/jar", "Cookie: theme=dark")) == (503, "open")
    assert marker(await _raw_get(port, "/cache/secret")) == (503, "open")
    assert marker(await _raw_get(port, varies, "Accept: text/plain", "Accept-Language: de")) == (
        200,
        "fallback-cached",
    )
    assert marker(await _raw_get(port, varies, "Accept: text/plain", "Accept-Language: fr")) == (
        503,
        "open",
    )


async def test_a_cached_answer_keeps_no_hop_by_hop_field_to_replay(
    start_sidecar: SidecarFactory, upstream: FaultyUpstream, client: aiohttp.ClientSession
) -> None:
    # /headers answers with "Connection: keep-alive, X-Hop", "X-Hop" and "Keep-Alive".
    sidecar, base = await _start(start_sidecar, upstream.port, fallback=CACHED, breaker=TRIP_ON_FIRST)
    status, headers, _ = await _get(client, f"{base}/headers")
    assert (status, headers["X-End-To-End"], "X-Hop" in headers) == (200, "passes", False)
    await _trip(sidecar, upstream, client, base)
    status, headers, _ = await _get(client, f"{base}/headers")
    assert (status, headers["x-breakwater"], headers["X-End-To-End"]) == (200, "fallback-cached", "passes")
    assert "X-Hop" not in headers
    assert "Keep-Alive" not in headers
    assert "x-hop" not in headers.get("Connection", "").lower()


async def test_cached_answers_expire_after_their_max_age(
    start_sidecar: SidecarFactory, upstream: FaultyUpstream, client: aiohttp.ClientSession
) -> None:
    sidecar, base = await _start(
        start_sidecar, upstream.port, fallback={"kind": "Cached", "maxAgeSeconds": 0.2}, breaker=TRIP_ON_FIRST
    )
    await _get(client, f"{base}/cache/old")
    await _trip(sidecar, upstream, client, base)
    assert (await _get(client, f"{base}/cache/old"))[1]["x-breakwater"] == "fallback-cached"
    await asyncio.sleep(0.3)
    assert (await _get(client, f"{base}/cache/old"))[1]["x-breakwater"] == "open"


async def test_the_cache_stays_within_its_entry_and_byte_budgets(
    start_sidecar: SidecarFactory, upstream: FaultyUpstream, client: aiohttp.ClientSession
) -> None:
    sidecar, base = await _start(
        start_sidecar, upstream.port, fallback={"kind": "Cached", "maxEntries": 2, "maxBytes": 4096}
    )
    for name in ("one", "two", "three"):
        await _get(client, f"{base}/cache/{name}")
    cache = sidecar.upstream("up").cache
    assert cache is not None
    assert len(cache) == 2
    await _get(client, f"{base}/big/1")  # 1 MiB: never stored, though it streamed through whole
    assert len(cache) == 2
    assert cache.bytes <= 4096


async def test_a_vary_header_makes_the_cached_answer_depend_on_that_request_header(
    start_sidecar: SidecarFactory, upstream: FaultyUpstream, client: aiohttp.ClientSession
) -> None:
    sidecar, base = await _start(start_sidecar, upstream.port, fallback=CACHED, breaker=TRIP_ON_FIRST)
    await _get(client, f"{base}/cache/v?vary=Accept-Language", headers={"Accept-Language": "de"})
    await _trip(sidecar, upstream, client, base)
    url = f"{base}/cache/v?vary=Accept-Language"
    assert (await _get(client, url, headers={"Accept-Language": "de"}))[1][
        "x-breakwater"
    ] == "fallback-cached"
    assert (await _get(client, url, headers={"Accept-Language": "fr"}))[1]["x-breakwater"] == "open"


# --------------------------------------------------------------------------------------------------
# Bulkhead
# --------------------------------------------------------------------------------------------------


async def test_the_bulkhead_refuses_requests_beyond_its_concurrency_at_once(
    start_sidecar: SidecarFactory, upstream: FaultyUpstream, client: aiohttp.ClientSession
) -> None:
    sidecar, base = await _start(
        start_sidecar, upstream.port, timeoutSeconds=5, bulkhead={"maxConcurrent": 2}
    )
    hanging = [asyncio.create_task(_get(client, f"{base}/hang")) for _ in range(2)]
    up = sidecar.upstream("up")
    for _ in range(100):
        if up.stats.in_flight == 2:
            break
        await asyncio.sleep(0.01)
    loop = asyncio.get_running_loop()
    start = loop.time()
    status, headers, _ = await _get(client, f"{base}/ok")
    assert (status, headers["x-breakwater"]) == (503, "bulkhead-full")
    assert loop.time() - start < 0.5
    upstream.release.set()
    assert [r[0] for r in await asyncio.gather(*hanging)] == [200, 200]
    assert (await _get(client, f"{base}/ok"))[0] == 200
    assert up.stats.bulkhead_full == 1
    assert up.breaker.snapshot().failures == 0  # a full bulkhead says nothing about the upstream


async def test_the_bulkhead_queues_up_to_max_pending_and_admits_them_in_turn(
    start_sidecar: SidecarFactory, upstream: FaultyUpstream, client: aiohttp.ClientSession
) -> None:
    sidecar, base = await _start(
        start_sidecar, upstream.port, timeoutSeconds=5, bulkhead={"maxConcurrent": 1, "maxPending": 2}
    )
    results = await asyncio.gather(*(_get(client, f"{base}/slow/0.2") for _ in range(4)))
    statuses = sorted(status for status, _, _ in results)
    assert statuses == [200, 200, 200, 503]
    assert sidecar.upstream("up").bulkhead is not None
    assert sidecar.upstream("up").bulkhead.active == 0  # type: ignore[union-attr]


async def test_an_open_breaker_rejects_before_the_bulkhead_so_a_full_bulkhead_says_open(
    start_sidecar: SidecarFactory, upstream: FaultyUpstream, client: aiohttp.ClientSession
) -> None:
    """While open, nothing else is spent on a call: no bulkhead slot or place in its line."""
    sidecar, base = await _start(
        start_sidecar, upstream.port, timeoutSeconds=5, bulkhead={"maxConcurrent": 1, "maxPending": 1}
    )
    hanging = asyncio.create_task(_get(client, f"{base}/hang"))
    up = sidecar.upstream("up")
    for _ in range(100):
        if up.stats.in_flight == 1:
            break
        await asyncio.sleep(0.01)
    up.breaker.reconfigure(up.breaker.settings, Mode.FORCE_OPEN)
    loop = asyncio.get_running_loop()
    start = loop.time()
    status, headers, _ = await _get(client, f"{base}/ok")
    assert (status, headers["x-breakwater"]) == (503, "open")
    assert loop.time() - start < 0.5  # not queued behind the hanging call
    assert (up.stats.rejected, up.stats.bulkhead_full) == (1, 0)
    upstream.release.set()
    assert (await hanging)[0] == 200


# --------------------------------------------------------------------------------------------------
# Retries
# --------------------------------------------------------------------------------------------------


RETRY_3 = {"attempts": 3, "budgetPercent": 100, "retryOn": ["5xx", "connect-failure"]}


async def _pay_into_the_budget(client: aiohttp.ClientSession, base: str, n: int = 5) -> None:
    """Retries are a share of recent requests: send a few first, as steady traffic would."""
    for _ in range(n):
        await _get(client, f"{base}/ok")


async def test_an_idempotent_request_is_retried_until_it_succeeds(
    start_sidecar: SidecarFactory, upstream: FaultyUpstream, client: aiohttp.ClientSession
) -> None:
    sidecar, base = await _start(start_sidecar, upstream.port, retry=RETRY_3)
    await _pay_into_the_budget(client, base)
    upstream.fail_next = 2
    status, _, body = await _get(client, f"{base}/countdown")
    assert (status, body) == (200, b"finally")
    assert upstream.hits["/countdown"] == 3
    up = sidecar.upstream("up")
    assert up.stats.retries == 2
    assert up.stats.successes == 6
    snap = up.breaker.snapshot()
    assert (snap.calls, snap.failures) == (8, 2)  # the breaker saw every attempt


async def test_a_request_with_a_body_is_replayed_on_retry(
    start_sidecar: SidecarFactory, upstream: FaultyUpstream, client: aiohttp.ClientSession
) -> None:
    _sidecar, base = await _start(start_sidecar, upstream.port, retry=RETRY_3)
    upstream.fail_next = 1
    status, _, _ = await _get(client, f"{base}/countdown", method="PUT", data=b"payload")
    assert status == 200
    assert upstream.hits["/countdown"] == 2
    assert upstream.last_headers["Content-Length"] == "7"


async def test_a_non_idempotent_request_is_never_retried(
    start_sidecar: SidecarFactory, upstream: FaultyUpstream, client: aiohttp.ClientSession
) -> None:
    sidecar, base = await _start(start_sidecar, upstream.port, retry=RETRY_3)
    upstream.fail_next = 2
    status, _, _ = await _get(client, f"{base}/countdown", method="POST", data=b"x")
    assert status == 503
    assert upstream.hits["/countdown"] == 1
    assert sidecar.upstream("up").stats.retries == 0


async def test_a_lone_request_gets_no_more_retries_than_the_budget_share_allows(
    start_sidecar: SidecarFactory, upstream: FaultyUpstream, client: aiohttp.ClientSession
) -> None:
    sidecar, base = await _start(start_sidecar, upstream.port, retry=RETRY_3)
    upstream.fail_next = 5
    status, _, _ = await _get(client, f"{base}/countdown")
    assert status == 503
    assert upstream.hits["/countdown"] == 2  # 1 retry = 100 % of 1 request
    assert sidecar.upstream("up").stats.retries == 1


async def test_retries_stop_at_the_budget_share_of_requests(
    start_sidecar: SidecarFactory, upstream: FaultyUpstream, client: aiohttp.ClientSession
) -> None:
    sidecar, base = await _start(
        start_sidecar,
        upstream.port,
        retry={"attempts": 3, "budgetPercent": 20, "retryOn": ["5xx"]},
        breaker={"consecutiveFailures": None},
    )
    upstream.failing = True
    for _ in range(20):
        await _get(client, f"{base}/flaky")
    up = sidecar.upstream("up")
    assert up.stats.retries <= 4  # 20 % of 20 requests
    assert up.stats.retries >= 3
    assert upstream.hits["/flaky"] == 20 + up.stats.retries


async def test_connect_failures_are_retried_and_the_last_failure_is_answered(
    start_sidecar: SidecarFactory, client: aiohttp.ClientSession
) -> None:
    sidecar, base = await _start(
        start_sidecar, free_port(), retry=RETRY_3, breaker={"consecutiveFailures": 10}
    )
    for _ in range(5):  # pay into the budget first: retries are a share of requests
        await _get(client, f"{base}/x", method="POST")
    status, headers, _ = await _get(client, f"{base}/x")
    assert (status, headers["x-breakwater"]) == (502, "connect-error")
    assert sidecar.upstream("up").stats.retries == 2
    assert sidecar.upstream("up").breaker.snapshot().failures == 8


async def test_an_open_breaker_ends_the_retries(
    start_sidecar: SidecarFactory, upstream: FaultyUpstream, client: aiohttp.ClientSession
) -> None:
    _sidecar, base = await _start(
        start_sidecar, upstream.port, retry=RETRY_3, breaker={"consecutiveFailures": 2, "openSeconds": 30}
    )
    await _pay_into_the_budget(client, base)
    upstream.fail_next = 5
    status, headers, _ = await _get(client, f"{base}/countdown")
    assert (status, headers["x-breakwater"]) == (503, "open")
    assert upstream.hits["/countdown"] == 2
