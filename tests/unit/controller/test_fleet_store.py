"""Which reports the fleet store takes as new: per pod, per session (told by its key), by sequence; and
how long the report channel keeps token verdicts."""

from __future__ import annotations

import time
from types import SimpleNamespace
from typing import cast

import pytest
from aiohttp import web

from breakwater.api import datagram
from breakwater.controller.reports import TOKEN_CACHE_SECONDS, Authenticator, FleetStore
from breakwater.k8s import tokenreview

SECRET = b"s" * 32


def session_id(expires: int) -> str:
    return datagram.Session("shop", "web-1", "u-1", expires).encode()


def test_a_replay_within_a_session_is_refused_and_a_new_session_starts_over() -> None:
    store = FleetStore()
    first_id = session_id(1_000)
    first, renewed = datagram.session_key(SECRET, first_id), datagram.session_key(SECRET, session_id(2_000))
    assert store.fresh("shop", "web-1", first, 5)
    assert not store.fresh("shop", "web-1", datagram.session_key(SECRET, first_id), 5)  # computed again
    assert not store.fresh("shop", "web-1", first, 4)
    assert store.fresh("shop", "web-1", first, 6)
    assert store.fresh("shop", "web-1", renewed, 1)  # a renewed session counts from its own start
    assert store.fresh("shop", "web-2", first, 1)  # another pod is another sequence
    assert store.newest[("shop", "web-1")] == (renewed, 1)


async def test_expired_token_verdicts_are_dropped_by_the_clock_not_only_by_the_next_review(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """After a rollout's burst of sessions no token may come for an hour: the burst's verdicts must not
    stay that long (they are ~470 bytes a pod)."""
    monkeypatch.setattr(
        tokenreview, "review", lambda api, token, audience: tokenreview.PodIdentity("shop", token, "", "sa")
    )
    auth = Authenticator(api=None)
    for pod in ("web-1", "web-2"):
        await auth.identify(cast(web.Request, SimpleNamespace(headers={"Authorization": f"Bearer {pod}"})))
    assert len(auth) == 2
    auth.purge(time.monotonic() + TOKEN_CACHE_SECONDS / 2)
    assert len(auth) == 2
    auth.purge(time.monotonic() + TOKEN_CACHE_SECONDS + 1)
    assert len(auth) == 0
