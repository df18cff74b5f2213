"""The admin listener (probes, stats, metrics) and the transition hook."""

from __future__ import annotations

import logging
from typing import Any

import aiohttp
import pytest

from breakwater.breaker import State
from breakwater.proxy import TransitionEvent
from tests.unit.proxy.helpers import FaultyUpstream, SidecarFactory, sidecar_doc, upstream_doc

pytestmark = pytest.mark.timeout(60)

TRIP = {"consecutiveFailures": 2, "openSeconds": 30, "jitter": 0}


def _UP(upstream: FaultyUpstream) -> dict[str, Any]:  # noqa: N802
    return upstream_doc("up", upstream.port, breaker=TRIP)


async def _json(client: aiohttp.ClientSession, url: str) -> tuple[int, Any]:
    async with client.get(url) as resp:
        return resp.status, await resp.json()


async def _trip(client: aiohttp.ClientSession, base: str) -> None:
    for _ in range(2):
        async with client.get(f"{base}/status/502") as resp:
            await resp.read()


async def test_an_open_breaker_never_makes_the_sidecar_unhealthy_or_unready(
    start_sidecar: SidecarFactory, upstream: FaultyUpstream, client: aiohttp.ClientSession
) -> None:
    sidecar = await start_sidecar(
        sidecar_doc(upstream_doc("up", upstream.port, breaker=TRIP), configHash="h1")
    )
    await _trip(client, f"http://127.0.0.1:{sidecar.listen_port('up')}")
    assert sidecar.upstream("up").breaker.state is State.OPEN
    assert await _json(client, f"{sidecar.admin_url}/healthz") == (200, {"ok": True})
    status, ready = await _json(client, f"{sidecar.admin_url}/readyz")
    assert status == 200
    assert ready == {"ready": True, "configHash": "h1", "lastReloadError": None}


async def test_stats_show_each_upstreams_breaker_counters_window_and_transitions(
    start_sidecar: SidecarFactory, upstream: FaultyUpstream, client: aiohttp.ClientSession
) -> None:
    sidecar = await start_sidecar(
        sidecar_doc(upstream_doc("up", upstream.port, breaker=TRIP), configHash="h1")
    )
    base = f"http://127.0.0.1:{sidecar.listen_port('up')}"
    async with client.get(f"{base}/ok") as resp:
        await resp.read()
    await _trip(client, base)
    async with client.get(f"{base}/ok") as resp:
        assert resp.status == 503
    status, stats = await _json(client, f"{sidecar.admin_url}/stats")
    assert status == 200
    assert stats["ready"] is True
    assert stats["configHash"] == "h1"
    assert stats["lastReloadError"] is None
    assert stats["listeners"]["admin"] == sidecar.admin_port
    up = stats["upstreams"]["up"]
    assert up["policy"] == "shop/up"
    assert up["state"] == "Open"
    assert up["mode"] == "Enforce"
    assert up["listenPort"] == sidecar.listen_port("up")
    assert 0 < up["retryAfterSeconds"] <= 30
    assert up["breaker"]["calls"] == 3
    assert up["breaker"]["failures"] == 2
    assert up["breaker"]["rejections"] == 1
    assert up["breaker"]["trips"] == 1
    assert up["window"]["calls"] == 3
    assert up["window"]["failureRate"] == pytest.approx(2 / 3)
    assert up["requests"] == {
        "success": 1,
        "failure": 2,
        "rejected": 1,
        "bulkhead_full": 0,
        "client_error": 0,
    }
    [transition] = up["lastTransitions"]
    assert (transition["from"], transition["to"], transition["reason"]) == (
        "Closed",
        "Open",
        "ConsecutiveFailures",
    )
    assert transition["configHash"] == "h1"


async def test_metrics_use_conventional_names_and_this_sidecars_own_registry(
    start_sidecar: SidecarFactory, upstream: FaultyUpstream, client: aiohttp.ClientSession
) -> None:
    first = await start_sidecar(sidecar_doc(upstream_doc("up", upstream.port, breaker=TRIP)))
    second = await start_sidecar(sidecar_doc(upstream_doc("other", upstream.port)))
    await _trip(client, f"http://127.0.0.1:{first.listen_port('up')}")
    async with client.get(f"{first.admin_url}/metrics") as resp:
        assert resp.status == 200
        assert resp.headers["Content-Type"].startswith("text/plain")
        text = await resp.text()
    labels = 'policy="shop/up",upstream="up"'
    assert 'breakwater_upstream_state{policy="shop/up",state="open",upstream="up"} 1.0' in text
    assert 'breakwater_upstream_state{policy="shop/up",state="closed",upstream="up"} 0.0' in text
    assert f'breakwater_upstream_requests_total{{outcome="failure",{labels}}} 2.0' in text
    assert 'breakwater_upstream_rejections_total{policy="shop/up",reason="open",upstream="up"} 0.0' in text
    assert 'breakwater_upstream_transitions_total{from="Closed",' in text
    assert f"breakwater_upstream_request_duration_seconds_count{{{labels}}} 2.0" in text
    assert "breakwater_upstream_request_duration_seconds_bucket{le=" in text
    assert "breakwater_config_info{" in text
    assert 'upstream="other"' not in text
    async with client.get(f"{second.admin_url}/metrics") as resp:
        other_text = await resp.text()
    assert 'upstream="other"' in other_text
    assert 'upstream="up"' not in other_text


async def test_transition_listeners_hear_every_transition_and_a_failing_one_harms_nothing(
    start_sidecar: SidecarFactory, upstream: FaultyUpstream, client: aiohttp.ClientSession
) -> None:
    sidecar = await start_sidecar(
        sidecar_doc(upstream_doc("up", upstream.port, breaker=TRIP), configHash="h1")
    )
    heard: list[TransitionEvent] = []

    def broken(event: TransitionEvent) -> None:
        raise RuntimeError("listener bug")

    sidecar.transition_listeners.append(broken)
    sidecar.transition_listeners.append(heard.append)
    base = f"http://127.0.0.1:{sidecar.listen_port('up')}"
    await _trip(client, base)
    async with client.get(f"{base}/ok") as resp:
        assert resp.headers["x-breakwater"] == "open"
    [event] = heard
    assert (event.upstream, event.policy, event.from_state, event.to_state) == (
        "up",
        "shop/up",
        "Closed",
        "Open",
    )
    assert event.reason == "ConsecutiveFailures"
    assert event.config_hash == "h1"
    assert event.to_json()["to"] == "Open"


async def test_each_transition_is_logged_once_with_structured_fields(
    start_sidecar: SidecarFactory,
    upstream: FaultyUpstream,
    client: aiohttp.ClientSession,
    caplog: pytest.LogCaptureFixture,
) -> None:
    sidecar = await start_sidecar(sidecar_doc(upstream_doc("up", upstream.port, breaker=TRIP)))
    with caplog.at_level(logging.INFO, logger="breakwater.proxy.transitions"):
        await _trip(client, f"http://127.0.0.1:{sidecar.listen_port('up')}")
    records = [r for r in caplog.records if r.name == "breakwater.proxy.transitions"]
    assert len(records) == 1
    assert records[0].getMessage() == "upstream up: Closed -> Open (ConsecutiveFailures)"
    fields = records[0].fields  # type: ignore[attr-defined]
    assert fields == {
        "event": "transition",
        "upstream": "up",
        "policy": "shop/up",
        "from": "Closed",
        "to": "Open",
        "reason": "ConsecutiveFailures",
    }


async def test_the_metrics_exposition_parses_with_prometheus_clients_own_parser(
    start_sidecar: SidecarFactory, upstream: FaultyUpstream, client: aiohttp.ClientSession
) -> None:
    from prometheus_client.parser import text_string_to_metric_families

    sidecar = await start_sidecar(sidecar_doc(_UP(upstream), configHash="h1"))
    base = f"http://127.0.0.1:{sidecar.listen_port('up')}"
    for _ in range(3):
        async with client.get(f"{base}/ok") as resp:
            await resp.read()
    async with client.get(f"{sidecar.admin_url}/metrics") as resp:
        text = await resp.text()
    families = {family.name: family for family in text_string_to_metric_families(text)}
    kinds = {name: family.type for name, family in families.items()}
    assert kinds["breakwater_upstream_state"] == "gauge"
    assert kinds["breakwater_upstream_requests"] == "counter"
    assert kinds["breakwater_upstream_request_duration_seconds"] == "histogram"
    assert kinds["breakwater_config_reloads"] == "counter"
    samples = {
        (s.name, tuple(sorted(s.labels.items()))): s.value for f in families.values() for s in f.samples
    }
    lv = (("policy", "shop/up"), ("upstream", "up"))
    assert samples[("breakwater_upstream_requests_total", (("outcome", "success"), *lv))] == 3
    assert samples[("breakwater_upstream_request_duration_seconds_count", lv)] == 3
    assert samples[("breakwater_upstream_request_duration_seconds_bucket", (("le", "+Inf"), *lv))] == 3
    served = {
        path: samples[("breakwater_upstream_path_requests_total", (("path", path), *lv))]
        for path in ("fast", "full")
    }
    assert served == ({"fast": 3, "full": 0} if start_sidecar.data_path == "fast" else {"fast": 0, "full": 3})
    assert samples[("breakwater_config_info", (("config_hash", "h1"), ("generation", "0")))] == 1
