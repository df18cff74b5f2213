"""Which reports the fleet store takes as new: per pod, per session (told by its key), by sequence."""

from __future__ import annotations

from breakwater.api import datagram
from breakwater.controller.reports import FleetStore

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
