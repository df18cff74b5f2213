"""Config reloads (file and PUT /config): atomic, state-keeping, listener-moving, error-tolerant."""

from __future__ import annotations

import asyncio
import socket
from typing import Any

import aiohttp
import pytest

from breakwater.api.plain.sidecar import PlainAdminConfig
from breakwater.breaker import State
from breakwater.proxy import ConfigApplyError, Sidecar, StaleConfigError
from breakwater.proxy.logs import CONFIG_CHANNEL
from breakwater.proxy.sidecar import run_sidecar
from tests.unit.proxy.helpers import (
    FaultyUpstream,
    SidecarFactory,
    eventually,
    sidecar_doc,
    upstream_doc,
)

pytestmark = pytest.mark.timeout(60)

OPEN_FOR_A_MINUTE = {"consecutiveFailures": 1, "openSeconds": 60, "jitter": 0}


async def _get(client: aiohttp.ClientSession, url: str, **kwargs: Any) -> tuple[int, Any, bytes]:
    async with client.get(url, **kwargs) as resp:
        return resp.status, resp.headers, await resp.read()


async def _trip(sidecar: Sidecar, client: aiohttp.ClientSession, name: str) -> None:
    await _get(client, f"http://127.0.0.1:{sidecar.listen_port(name)}/status/500")
    assert sidecar.upstream(name).breaker.state is State.OPEN


async def test_a_changed_file_is_applied_and_an_upstream_with_unchanged_settings_keeps_its_state(
    start_sidecar: SidecarFactory, upstream: FaultyUpstream, client: aiohttp.ClientSession
) -> None:
    a = upstream_doc("a", upstream.port, breaker=OPEN_FOR_A_MINUTE)
    b = upstream_doc("b", upstream.port, breaker=OPEN_FOR_A_MINUTE)
    sidecar = await start_sidecar(sidecar_doc(a, b))
    await _trip(sidecar, client, "a")
    breaker_a = sidecar.upstream("a").breaker
    port_a = sidecar.listen_port("a")
    old_hash = sidecar.routes.config_hash

    b_changed = {**b, "timeoutSeconds": 1.0, "breaker": {**OPEN_FOR_A_MINUTE, "consecutiveFailures": 3}}
    start_sidecar.write(sidecar_doc(a, b_changed, configHash="v2"))
    await eventually(lambda: sidecar.routes.config_hash == "v2")

    assert sidecar.routes.config_hash != old_hash
    assert sidecar.upstream("a").breaker is breaker_a
    assert breaker_a.state is State.OPEN
    assert sidecar.listen_port("a") == port_a
    assert sidecar.upstream("b").timeout == 1.0
    assert sidecar.upstream("b").breaker.settings.consecutive_failures == 3
    status, headers, _ = await _get(client, f"http://127.0.0.1:{port_a}/ok")
    assert (status, headers["x-breakwater"]) == (503, "open")


async def test_changed_breaker_settings_reconfigure_the_breaker_keeping_its_counters(
    start_sidecar: SidecarFactory, upstream: FaultyUpstream, client: aiohttp.ClientSession
) -> None:
    a = upstream_doc("a", upstream.port)
    sidecar = await start_sidecar(sidecar_doc(a))
    for _ in range(3):
        await _get(client, f"http://127.0.0.1:{sidecar.listen_port('a')}/ok")
    start_sidecar.write(sidecar_doc({**a, "mode": "Observe"}, configHash="observe"))
    await eventually(lambda: sidecar.routes.config_hash == "observe")
    snap = sidecar.upstream("a").breaker.snapshot()
    assert snap.mode.value == "Observe"
    assert snap.calls == 3
    assert sidecar.upstream("a").stats.successes == 3


async def test_listeners_follow_upstreams_as_they_are_added_moved_and_removed(
    start_sidecar: SidecarFactory, upstream: FaultyUpstream, client: aiohttp.ClientSession
) -> None:
    sidecar = await start_sidecar(sidecar_doc(upstream_doc("a", upstream.port)))
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        fixed = s.getsockname()[1]
    start_sidecar.write(
        sidecar_doc(upstream_doc("a", upstream.port, listenPort=fixed), upstream_doc("b", upstream.port))
    )
    await eventually(lambda: "b" in sidecar.routes.by_name)
    assert sidecar.listen_port("a") == fixed
    assert (await _get(client, f"http://127.0.0.1:{fixed}/ok"))[0] == 200
    port_b = sidecar.listen_port("b")
    assert (await _get(client, f"http://127.0.0.1:{port_b}/ok"))[0] == 200

    start_sidecar.write(sidecar_doc(upstream_doc("a", upstream.port, listenPort=fixed)))
    await eventually(lambda: "b" not in sidecar.routes.by_name)
    with pytest.raises(KeyError):
        sidecar.listen_port("b")
    async with aiohttp.ClientSession() as fresh:  # a new connection to the removed listener is refused
        with pytest.raises(aiohttp.ClientConnectionError):
            await _get(fresh, f"http://127.0.0.1:{port_b}/ok")


async def test_a_request_in_flight_finishes_on_the_config_it_started_with(
    start_sidecar: SidecarFactory, upstream: FaultyUpstream, client: aiohttp.ClientSession
) -> None:
    a = upstream_doc("a", upstream.port, timeoutSeconds=5)
    sidecar = await start_sidecar(sidecar_doc(a))
    base = f"http://127.0.0.1:{sidecar.listen_port('a')}"
    slow = asyncio.create_task(_get(client, f"{base}/slow/0.5"))
    await eventually(lambda: sidecar.upstream("a").stats.in_flight == 1)
    start_sidecar.write(sidecar_doc({**a, "timeoutSeconds": 0.1}, configHash="short"))
    await eventually(lambda: sidecar.routes.config_hash == "short")
    status, _, body = await slow
    assert (status, body) == (200, b"slow ok")  # the old 5 s timeout applied to it
    assert (await _get(client, f"{base}/slow/0.5"))[0] == 504  # new requests get the new one


async def test_an_invalid_file_keeps_the_last_good_config_and_says_why_until_it_is_fixed(
    start_sidecar: SidecarFactory,
    upstream: FaultyUpstream,
    client: aiohttp.ClientSession,
    caplog: pytest.LogCaptureFixture,
) -> None:
    good = sidecar_doc(upstream_doc("a", upstream.port), configHash="good")
    sidecar = await start_sidecar(good)
    start_sidecar.path.write_text('{"upstreams": [{"name": "a", "host": "h", "port": "not a port"}]}')
    await eventually(lambda: sidecar.last_reload_error is not None)
    assert "config rejected, keeping the last good one: " in caplog.text
    assert sidecar.routes.config_hash == "good"
    assert (await _get(client, f"http://127.0.0.1:{sidecar.listen_port('a')}/ok"))[0] == 200

    async with client.get(f"{sidecar.admin_url}/readyz") as resp:
        assert resp.status == 200
        ready = await resp.json()
    assert ready["configHash"] == "good"
    assert "upstreams[0].port" in ready["lastReloadError"]["error"]
    async with client.get(f"{sidecar.admin_url}/stats") as resp:
        stats = await resp.json()
    assert "upstreams[0].port" in stats["lastReloadError"]["error"]

    start_sidecar.write({**good, "configHash": "fixed"})
    await eventually(lambda: sidecar.routes.config_hash == "fixed")
    assert sidecar.last_reload_error is None


async def test_a_config_whose_listener_cannot_bind_is_refused_and_the_old_one_keeps_serving(
    start_sidecar: SidecarFactory, upstream: FaultyUpstream, client: aiohttp.ClientSession
) -> None:
    sidecar = await start_sidecar(sidecar_doc(upstream_doc("a", upstream.port), configHash="one"))
    blocker = socket.socket()
    blocker.bind(("127.0.0.1", 0))
    blocker.listen()
    try:
        taken = blocker.getsockname()[1]
        from breakwater.api.plain.sidecar import PlainUpstreamConfig

        assert sidecar.config is not None
        extra = PlainUpstreamConfig(name="b", host="127.0.0.1", port=upstream.port, listen_port=taken)
        bad = sidecar.config.replace(config_hash="two", upstreams=(*sidecar.config.upstreams, extra))
        with pytest.raises(ConfigApplyError, match="cannot listen"):
            await sidecar.apply_config(bad)
        assert sidecar.routes.config_hash == "one"
        assert sidecar.last_reload_error is not None
        assert (await _get(client, f"http://127.0.0.1:{sidecar.listen_port('a')}/ok"))[0] == 200
    finally:
        blocker.close()


async def test_a_sidecar_started_on_an_invalid_file_is_unready_until_a_good_one_arrives(
    start_sidecar: SidecarFactory,
    upstream: FaultyUpstream,
    client: aiohttp.ClientSession,
    tmp_path: Any,
    caplog: pytest.LogCaptureFixture,
) -> None:
    path = tmp_path / "late.json"
    path.write_text("{}}")
    admin = PlainAdminConfig(port=0, address="127.0.0.1")
    async with run_sidecar(path, require_config=False, poll_interval=0.05, admin=admin) as sidecar:
        assert not sidecar.ready
        # There is no last good config to keep: the log does not pretend there is one.
        assert "config rejected, and none is running yet: " in caplog.text
        assert "last good" not in caplog.text
        async with client.get(f"{sidecar.admin_url}/readyz") as resp:
            assert resp.status == 503
            assert "not valid JSON" in (await resp.json())["lastReloadError"]["error"]
        async with client.get(f"{sidecar.admin_url}/healthz") as resp:
            assert resp.status == 200
        start_sidecar.path = path
        start_sidecar.write(sidecar_doc(upstream_doc("a", upstream.port)))
        await eventually(lambda: sidecar.ready)
        async with client.get(f"{sidecar.admin_url}/readyz") as resp:
            assert resp.status == 200


async def test_an_older_generation_is_refused(
    start_sidecar: SidecarFactory, upstream: FaultyUpstream
) -> None:
    sidecar = await start_sidecar(sidecar_doc(upstream_doc("a", upstream.port), generation=5))
    assert sidecar.config is not None
    older = sidecar.config.replace(generation=4, config_hash="old")
    with pytest.raises(StaleConfigError):
        await sidecar.apply_config(older)
    assert sidecar.routes.config.generation == 5


async def test_a_file_older_than_the_running_generation_is_kept_out_and_said_once(
    start_sidecar: SidecarFactory, upstream: FaultyUpstream, caplog: pytest.LogCaptureFixture
) -> None:
    """The mounted copy lags what the operator pushed: not an error for /readyz, but said in the log."""
    sidecar = await start_sidecar(sidecar_doc(upstream_doc("a", upstream.port), generation=5))
    caplog.set_level("INFO", logger=CONFIG_CHANNEL)
    start_sidecar.write(sidecar_doc(upstream_doc("a", upstream.port), generation=3, configHash="older"))
    await eventually(lambda: "generation 3 is older than the running generation 5" in caplog.text)
    assert sidecar.routes.config.generation == 5
    assert sidecar.last_reload_error is None


# --------------------------------------------------------------------------------------------------
# PUT /config
# --------------------------------------------------------------------------------------------------


async def test_put_config_needs_the_bearer_token_when_one_is_set(
    start_sidecar: SidecarFactory, upstream: FaultyUpstream, client: aiohttp.ClientSession
) -> None:
    doc = sidecar_doc(upstream_doc("a", upstream.port), configHash="file")
    sidecar = await start_sidecar(doc, admin_token="s3cret")
    pushed = {**doc, "configHash": "pushed", "generation": 2}
    async with client.put(f"{sidecar.admin_url}/config", json=pushed) as resp:
        assert resp.status == 401
        assert resp.headers["WWW-Authenticate"].startswith("Bearer")
    async with client.put(
        f"{sidecar.admin_url}/config", json=pushed, headers={"Authorization": "Bearer wrong"}
    ) as resp:
        assert resp.status == 401
    auth = {"Authorization": "Bearer s3cret"}
    async with client.put(f"{sidecar.admin_url}/config", json=pushed, headers=auth) as resp:
        assert resp.status == 200
        assert await resp.json() == {"applied": True, "configHash": "pushed", "generation": 2}
    assert sidecar.routes.config_hash == "pushed"
    async with client.put(f"{sidecar.admin_url}/config", json=pushed, headers=auth) as resp:
        assert (await resp.json())["applied"] is False
    async with client.put(
        f"{sidecar.admin_url}/config", json={**pushed, "generation": 1}, headers=auth
    ) as resp:
        assert resp.status == 409
    async with client.put(f"{sidecar.admin_url}/config", data=b"{oops", headers=auth) as resp:
        assert resp.status == 400
        assert "not valid JSON" in (await resp.json())["error"]
    async with client.get(f"{sidecar.admin_url}/config", headers=auth) as resp:
        assert (await resp.json())["configHash"] == "pushed"


async def test_put_config_without_a_token_is_served_to_loopback_clients(
    start_sidecar: SidecarFactory, upstream: FaultyUpstream, client: aiohttp.ClientSession, monkeypatch: Any
) -> None:
    monkeypatch.delenv("BREAKWATER_ADMIN_TOKEN", raising=False)
    doc = sidecar_doc(upstream_doc("a", upstream.port))
    sidecar = await start_sidecar(doc)
    async with client.put(f"{sidecar.admin_url}/config", json={**doc, "configHash": "local"}) as resp:
        assert resp.status == 200
    assert sidecar.routes.config_hash == "local"


# --------------------------------------------------------------------------------------------------
# Reload under load
# --------------------------------------------------------------------------------------------------


@pytest.mark.slow
async def test_ten_reloads_under_500_requests_per_second_fail_no_request_and_keep_state(
    start_sidecar: SidecarFactory, upstream: FaultyUpstream
) -> None:
    hot = upstream_doc("hot", upstream.port, breaker={"consecutiveFailures": 50})
    tripped = upstream_doc("tripped", upstream.port, breaker=OPEN_FOR_A_MINUTE)
    sidecar = await start_sidecar(sidecar_doc(hot, tripped, configHash="c0"))
    async with aiohttp.ClientSession(trust_env=False) as client:
        await _trip(sidecar, client, "tripped")
        hot_breaker = sidecar.upstream("hot").breaker
        url = f"http://127.0.0.1:{sidecar.listen_port('hot')}/ok"
        loop = asyncio.get_running_loop()
        duration, rate, workers = 4.0, 600, 12
        start = loop.time()
        failures: list[str] = []
        sent = 0

        async def worker(k: int) -> None:
            nonlocal sent
            i = k
            while True:
                due = start + i / rate
                now = loop.time()
                if due - start >= duration:
                    return
                if due > now:
                    await asyncio.sleep(due - now)
                sent += 1
                try:
                    async with client.get(url) as resp:
                        body = await resp.read()
                        if resp.status != 200 or body != b"ok":
                            failures.append(f"{resp.status} {resp.headers.get('x-breakwater')}")
                except aiohttp.ClientError as exc:
                    failures.append(repr(exc))
                i += workers

        async def reloader() -> None:
            for n in range(1, 11):
                await asyncio.sleep(duration / 11)
                extra = [upstream_doc(f"extra{n}", upstream.port)] if n % 2 else []
                changed_hot = {**hot, "timeoutSeconds": 2.0 + n / 10}
                start_sidecar.write(sidecar_doc(changed_hot, tripped, *extra, configHash=f"c{n}"))
                await eventually(lambda n=n: sidecar.routes.config_hash == f"c{n}")  # type: ignore[misc]

        await asyncio.gather(reloader(), *(worker(k) for k in range(workers)))

    assert sidecar.routes.config_hash == "c10"
    assert sidecar.reload_counters.success >= 11
    assert failures == []
    assert sent == int(duration * rate)  # the whole schedule went out (its speed is the machine's)
    assert sidecar.upstream("hot").breaker is hot_breaker
    assert hot_breaker.snapshot().calls == sent
    assert sidecar.upstream("hot").stats.successes == sent
    assert sidecar.upstream("tripped").breaker.state is State.OPEN
