from __future__ import annotations

from breakwater.api.bundle import PolicyBundle
from breakwater.api.sidecar import UpstreamConfig
from breakwater.injection.resolve import resolve


def bundle(name: str, created: str, *upstreams: UpstreamConfig, app: str = "checkout") -> PolicyBundle:
    return PolicyBundle(
        policy=f"shop/{name}",
        created=created,
        selector={"matchLabels": {"app": app}},
        upstreams=list(upstreams),
    )


def up(name: str, host: str, port: int = 8080, listen: int | None = None) -> UpstreamConfig:
    return UpstreamConfig(name=name, host=host, port=port, listen_port=listen)


def test_policies_with_different_upstreams_are_merged() -> None:
    a = bundle("a", "2026-01-01T00:00:00Z", up("payments", "payments.shop", listen=15210))
    b = bundle("b", "2026-01-02T00:00:00Z", up("stock", "stock.shop", listen=15211))
    result = resolve({"app": "checkout"}, [b, a])
    assert [u.name for u in result.config.upstreams] == ["payments", "stock"]
    assert result.policies == ("shop/a", "shop/b")
    assert result.conflicts == ()
    assert [u.policy for u in result.config.upstreams] == ["shop/a", "shop/b"]


def test_the_older_policy_wins_an_upstream_both_claim() -> None:
    old = bundle("zeta", "2026-01-01T00:00:00Z", up("payments", "payments.shop", listen=15210))
    new = bundle(
        "alpha", "2026-03-01T00:00:00Z", up("pay", "payments.shop", listen=15219), up("stock", "stock")
    )
    result = resolve({"app": "checkout"}, [new, old])
    assert [(u.name, u.policy) for u in result.config.upstreams] == [
        ("payments", "shop/zeta"),
        ("stock", "shop/alpha"),
    ]
    (conflict,) = result.conflicts
    assert (conflict.loser, conflict.winner, conflict.upstream) == ("shop/alpha", "shop/zeta", "pay")


def test_equal_creation_times_fall_back_to_the_name() -> None:
    same = "2026-01-01T00:00:00Z"
    result = resolve(
        {"app": "checkout"}, [bundle("b", same, up("x", "h1")), bundle("a", same, up("x", "h2"))]
    )
    assert result.config.upstreams[0].host == "h2"


def test_a_listen_port_claimed_twice_is_a_conflict() -> None:
    a = bundle("a", "1", up("one", "h1", listen=15210))
    b = bundle("b", "2", up("two", "h2", listen=15210))
    result = resolve({"app": "checkout"}, [a, b])
    assert [u.name for u in result.config.upstreams] == ["one"]
    assert result.conflicts[0].reason == "same listenPort 15210"


def test_unselected_policies_do_not_apply_and_the_hash_is_stable() -> None:
    a = bundle("a", "1", up("one", "h1"))
    other = bundle("b", "2", up("two", "h2"), app="cart")
    first = resolve({"app": "checkout"}, [a, other])
    assert first.policies == ("shop/a",)
    assert first.config_hash == resolve({"app": "checkout"}, [other, a]).config_hash
    changed = bundle("a", "1", up("one", "h1", port=9090))
    assert resolve({"app": "checkout"}, [changed]).config_hash != first.config_hash


def test_an_upstream_of_a_deleted_policy_stays_as_a_pass_through_listener() -> None:
    from breakwater.injection.podinfo import carry_over

    before = resolve({"app": "checkout"}, [bundle("a", "1", up("one", "h1", listen=15210))]).config
    after = resolve({"app": "checkout"}, []).config
    kept = carry_over(before, after)
    assert [(u.name, u.mode, u.listen_port) for u in kept.upstreams] == [("one", "Disabled", 15210)]


def test_downward_api_labels_are_parsed() -> None:
    from breakwater.injection.podinfo import parse_labels

    text = 'app="checkout"\npod-template-hash="7d9f"\nquote="a\\"b"\n'
    assert parse_labels(text) == {"app": "checkout", "pod-template-hash": "7d9f", "quote": 'a"b'}


def test_the_hash_ignores_where_the_sidecar_binds() -> None:
    bundles = [bundle("a", "1", up("one", "h1", listen=15210))]
    here = resolve({"app": "checkout"}, bundles)
    there = resolve({"app": "checkout"}, bundles, listen_address="127.0.10.7", admin_port=16020)
    assert here.config_hash == there.config_hash
