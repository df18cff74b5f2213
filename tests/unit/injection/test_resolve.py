from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from breakwater.api.bundle import PolicyBundle
from breakwater.api.plain import bundle as plain
from breakwater.api.sidecar import UpstreamConfig
from breakwater.injection.resolve import resolve
from breakwater.proxy import podsource


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


def on_the_sidecar(*bundles: PolicyBundle) -> list[plain.PlainPolicyBundle]:
    """The bundles as a sidecar reads them from its mounted ConfigMap."""
    return [plain.parse_bundle(b.to_json()) for b in bundles]


def test_an_upstream_of_a_deleted_policy_stays_as_a_pass_through_listener() -> None:
    from breakwater.injection.podinfo import carry_over

    ports = {"admin_port": 15200, "proxy_port": 15201}
    mounted = on_the_sidecar(bundle("a", "1", up("one", "h1", listen=15210)))
    before, _ = podsource.resolve({"app": "checkout"}, mounted, **ports)
    after, _ = podsource.resolve({"app": "checkout"}, [], **ports)
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


_UPSTREAMS = st.builds(
    up,
    name=st.sampled_from(["one", "two", "three"]),
    host=st.sampled_from(["h1", "h2"]),
    port=st.sampled_from([80, 8080]),
    listen=st.sampled_from([None, 15210, 15211, 15200, 16020]),
)
_BUNDLES = st.lists(
    st.builds(
        lambda name, created, ups, app: bundle(name, created, *ups, app=app),
        name=st.sampled_from(["a", "b", "c", "d"]),
        created=st.sampled_from(["1", "2", "3"]),
        ups=st.lists(_UPSTREAMS, max_size=3),
        app=st.sampled_from(["checkout", "cart"]),
    ),
    max_size=4,
    unique_by=lambda b: b.policy,
)


@settings(max_examples=200)
@given(_BUNDLES, st.booleans(), st.sampled_from([(15200, 15201), (16020, 16080)]))
def test_a_sidecar_resolves_its_bundles_to_the_config_and_hash_the_operator_computes(
    bundles: list[PolicyBundle], transparent: bool, ports: tuple[int, int]
) -> None:
    if transparent and bundles:
        bundles[0] = bundles[0].model_copy(update={"transparent": True})
    admin, proxy = ports
    operator = resolve({"app": "checkout"}, bundles, admin_port=admin, proxy_port=proxy)
    sidecar, conflicts = podsource.resolve(
        {"app": "checkout"}, on_the_sidecar(*bundles), admin_port=admin, proxy_port=proxy
    )
    assert sidecar.config_hash == operator.config_hash
    assert sidecar.to_json() == operator.config.to_json()
    assert conflicts == operator.conflicts
