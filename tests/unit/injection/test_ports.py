"""The sidecar's own ports: chosen at admission, carried by the pod, read back from the pod, never
taken by an upstream, and what happens when a listenPort collides with the app's or its mesh's."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

import pytest

from breakwater.api import constants
from breakwater.api.plain.parse import parse_sidecar_config
from breakwater.api.policy import PolicyError, parse_spec
from breakwater.controller import settings as operator_settings
from breakwater.controller.admission import Inject, Skip, decide
from breakwater.controller.pods import facts
from breakwater.controller.status import desired_status, view_pods
from breakwater.injection import pod as injection
from breakwater.injection.render import ReservedListenPort, render_bundle
from breakwater.injection.resolve import resolve
from breakwater.proxy.podsource import Binding, PodConfigSource

OPERATOR = {"admin_port": 15200, "proxy_port": 15201}


def policy(
    name: str = "payments",
    *,
    listen_port: int = 15210,
    created: str = "2026-11-01T00:00:00Z",
    sidecar: dict[str, int] | None = None,
    transparent: bool = False,
) -> dict[str, Any]:
    spec: dict[str, Any] = {
        "selector": {"matchLabels": {"app": "checkout"}},
        "transparent": transparent,
        "upstreams": [{"name": name, "host": f"{name}.shop", "port": 8080, "listenPort": listen_port}],
    }
    if sidecar is not None:
        spec["sidecar"] = sidecar
    return {
        "apiVersion": "breakwater.dev/v1alpha1",
        "kind": "CircuitBreakerPolicy",
        "metadata": {"name": name, "namespace": "shop", "uid": name, "creationTimestamp": created},
        "spec": spec,
    }


def app_pod(*, labels: dict[str, str] | None = None, **extra: Any) -> dict[str, Any]:
    containers = [{"name": "app", "image": "app:1"}, *extra.pop("containers", [])]
    return {
        "metadata": {
            "name": "checkout-1",
            "labels": {"app": "checkout", **(labels or {})},
            "annotations": extra.pop("annotations", {}),
        },
        "spec": {"containers": containers, **extra},
    }


def injected(pod: dict[str, Any], decision: Inject) -> dict[str, Any]:
    r = decision.resolution
    plan = injection.InjectionPlan(
        policies=r.policies,
        listen_ports=r.listen_ports,
        transparent=r.transparent,
        config_hash=r.config_hash,
        admin_port=r.admin_port,
        proxy_port=r.proxy_port,
    )
    injection.inject(pod, template=injection.SidecarTemplate(image="bw:1"), plan=plan)
    return pod


# -- chosen at admission, carried by the pod --------------------------------------------------------


def test_a_pod_gets_the_operators_ports_unless_the_oldest_policy_setting_one_says_otherwise() -> None:
    plain = decide(app_pod(), [render_bundle(policy())], **OPERATOR)
    assert isinstance(plain, Inject)
    assert (plain.resolution.admin_port, plain.resolution.proxy_port) == (15200, 15201)
    bundles = [
        render_bundle(policy("older", listen_port=15211, sidecar={"adminPort": 16020})),
        render_bundle(
            policy("newer", listen_port=15212, created="2026-12-01T00:00:00Z", sidecar={"adminPort": 17020})
        ),
    ]
    chosen = decide(app_pod(), bundles, **OPERATOR)
    assert isinstance(chosen, Inject)
    assert (chosen.resolution.admin_port, chosen.resolution.proxy_port) == (16020, 15201)
    # One policy decides both: a newer policy's proxyPort cannot land on the older one's adminPort.
    bundles[1] = render_bundle(
        policy("newer", listen_port=15212, created="2026-12-01T00:00:00Z", sidecar={"proxyPort": 16020})
    )
    chosen = decide(app_pod(), bundles, **OPERATOR)
    assert isinstance(chosen, Inject)
    assert (chosen.resolution.admin_port, chosen.resolution.proxy_port) == (16020, 15201)


def test_the_pod_carries_its_ports_and_everything_reads_them_from_the_pod() -> None:
    decision = decide(
        app_pod(), [render_bundle(policy(sidecar={"adminPort": 16020, "proxyPort": 16080}))], **OPERATOR
    )
    assert isinstance(decision, Inject)
    pod = injected(app_pod(), decision)
    sidecar = injection.sidecar_of(pod)
    assert sidecar is not None
    args = sidecar["args"]
    assert args[args.index("--admin-port") + 1] == "16020"
    assert args[args.index("--proxy-port") + 1] == "16080"
    assert next(p for p in sidecar["ports"] if p["name"] == "bw-admin")["containerPort"] == 16020
    assert sidecar["readinessProbe"]["httpGet"]["port"] == "bw-admin"  # by name: follows the port
    assert pod["metadata"]["annotations"][constants.ANNOTATION_SIDECAR_PORTS] == "admin=16020,proxy=16080"
    assert injection.sidecar_ports(pod) == (16020, 16080)
    meta_only = facts({"metadata": pod["metadata"]})
    assert meta_only is not None
    assert meta_only.sidecar_ports == (16020, 16080)


def test_a_pod_injected_before_the_ports_moved_is_read_as_it_was_injected() -> None:
    """Before this release the sidecar bound 15020/15080 and the pod had no ports annotation: the
    container's args say so, and a pod known by its metadata alone is taken to bind the legacy ports."""
    decision = decide(app_pod(), [render_bundle(policy())], admin_port=15020, proxy_port=15080)
    assert isinstance(decision, Inject)
    old = injected(app_pod(), decision)
    del old["metadata"]["annotations"][constants.ANNOTATION_SIDECAR_PORTS]
    assert injection.sidecar_ports(old) == (15020, 15080)
    assert injection.sidecar_ports({"metadata": {}, "spec": {}}) == (15020, 15080)
    # What runs is what the arguments say, whatever an annotation was edited to.
    old["metadata"]["annotations"][constants.ANNOTATION_SIDECAR_PORTS] = "admin=16020,proxy=16080"
    assert injection.sidecar_ports(old) == (15020, 15080)
    del old["metadata"]["annotations"][constants.ANNOTATION_SIDECAR_PORTS]
    legacy = facts({"metadata": {**old["metadata"]}})
    assert legacy is not None
    assert legacy.injected
    assert legacy.sidecar_ports == (15020, 15080)


def test_the_config_hash_does_not_depend_on_the_ports_a_pod_binds() -> None:
    """A sidecar injected on other ports reports the hash the operator expects; an upstream whose
    listenPort is one of its own ports is not served there (and the status says so, below)."""
    bundles = [render_bundle(policy(listen_port=15020))]
    operator = resolve({"app": "checkout"}, bundles, admin_port=15200, proxy_port=15201)
    legacy = resolve({"app": "checkout"}, bundles, admin_port=15020, proxy_port=15080)
    assert operator.config_hash == legacy.config_hash
    assert [u.listen_port for u in operator.config.upstreams] == [15020]
    assert legacy.config.upstreams == []
    assert [(c.winner, c.reason) for c in legacy.conflicts] == [("the sidecar", "reserved port")]


def test_a_sidecar_drops_what_the_operator_resolved_onto_its_own_port(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    config = resolve({"app": "checkout"}, [render_bundle(policy(listen_port=15020))]).config
    # As the sidecar receives it (a config reply): read without the models.
    bound = Binding(admin_port=15020, proxy_port=15080).apply(parse_sidecar_config(config.to_json()))
    assert not bound.upstreams
    assert bound.config_hash == config.config_hash
    assert bound.admin.port == 15020
    assert "upstream payments is not served" in caplog.text
    policies = tmp_path / "policies"
    policies.mkdir()
    (policies / "payments.json").write_text(render_bundle(policy(listen_port=15020)).to_json())
    (tmp_path / "labels").write_text('app="checkout"\n')
    mounted = PodConfigSource(
        policies, tmp_path / "labels", Binding(admin_port=15020, proxy_port=15080)
    ).load()
    assert not mounted.upstreams
    assert mounted.config_hash == config.config_hash


# -- never taken by an upstream -----------------------------------------------------------------------


def test_the_crd_rule_refuses_the_ports_the_policy_names_or_the_built_in_defaults() -> None:
    for spec, refused in [
        (policy(listen_port=15200)["spec"], True),
        (policy(listen_port=15201)["spec"], True),
        (policy(listen_port=15200, sidecar={"adminPort": 16020})["spec"], False),
        (policy(listen_port=16020, sidecar={"adminPort": 16020})["spec"], True),
        (policy(listen_port=16080, sidecar={"proxyPort": 16080})["spec"], True),
        (policy(listen_port=15020)["spec"], False),  # the legacy ports are an app's to use again
    ]:
        if refused:
            with pytest.raises(PolicyError, match="listenPort must not be a port of the sidecar itself"):
                parse_spec(spec)
        else:
            parse_spec(spec)
    with pytest.raises(PolicyError, match="adminPort and proxyPort must differ"):
        parse_spec(policy(sidecar={"adminPort": 15201})["spec"])


def test_the_operator_refuses_a_listen_port_its_own_settings_give_the_sidecar() -> None:
    """The CRD cannot see the operator's --sidecar-admin-port: rendering checks it (Accepted=False)."""
    body = policy(listen_port=16020)
    assert render_bundle(body, sidecar_ports=(15200, 15201)).upstreams[0].listen_port == 16020
    with pytest.raises(ReservedListenPort, match=r"listenPort 16020 \(payments\) is a port of the sidecar"):
        render_bundle(body, sidecar_ports=(16020, 16080))
    # The policy's own spec.sidecar replaces the operator's port: 16020 is then free for an upstream.
    own = render_bundle(policy(listen_port=16020, sidecar={"adminPort": 17020}), sidecar_ports=(16020, 16080))
    assert (own.admin_port, own.proxy_port) == (17020, None)
    with pytest.raises(ReservedListenPort, match="both at 16080"):
        render_bundle(policy(sidecar={"adminPort": 16080}), sidecar_ports=(16020, 16080))


def test_the_operator_flags_set_the_ports_and_refuse_nonsense() -> None:
    def parsed(*flags: str) -> operator_settings.OperatorSettings:
        parser = argparse.ArgumentParser()
        operator_settings.add_arguments(parser)
        return operator_settings.from_args(
            parser.parse_args(["--webhook-url=https://127.0.0.1:9443", *flags])
        )

    assert (parsed().sidecar_admin_port, parsed().sidecar_proxy_port) == (15200, 15201)
    moved = parsed("--sidecar-admin-port=16020", "--sidecar-proxy-port=16080")
    assert (moved.sidecar_admin_port, moved.sidecar_proxy_port) == (16020, 16080)
    with pytest.raises(operator_settings.SettingsError, match="must differ"):
        parsed("--sidecar-admin-port=15201")
    with pytest.raises(operator_settings.SettingsError, match="--sidecar-proxy-port: expected 1024 to 65535"):
        parsed("--sidecar-proxy-port=80")


# -- collisions are reported, not silent --------------------------------------------------------------


def test_a_listen_port_or_sidecar_port_the_app_declares_is_a_skip_naming_the_port() -> None:
    bundles = [render_bundle(policy())]
    clash = decide(
        app_pod(containers=[{"name": "web", "ports": [{"containerPort": 15200}]}]), bundles, **OPERATOR
    )
    assert clash == Skip("ListenPortClash", "the app already declares port 15200 (the sidecar's admin port)")


@pytest.mark.parametrize(
    ("meshed", "mesh"),
    [
        ({"containers": [{"name": "istio-proxy", "image": "istio/proxyv2"}]}, "Istio"),
        ({"labels": {"sidecar.istio.io/inject": "true"}}, "Istio"),
        ({"labels": {"istio.io/rev": "stable"}}, "Istio"),
        ({"labels": {"istio.io/dataplane-mode": "ambient"}}, "Istio"),
        ({"annotations": {"linkerd.io/inject": "enabled"}}, "Linkerd"),
        ({"containers": [{"name": "linkerd-proxy", "image": "cr.l5d.io/proxy"}]}, "Linkerd"),
    ],
)
def test_a_meshed_pod_with_a_port_in_the_meshs_range_is_a_skip_naming_mesh_and_port(
    meshed: dict[str, Any], mesh: str
) -> None:
    low, high = constants.MESH_PORT_RANGES[mesh]
    inside = low + 1
    bundles = [render_bundle(policy(listen_port=inside))]
    decision = decide(app_pod(**meshed), bundles, **OPERATOR)
    assert decision == Skip(
        "MeshPortClash", f"{mesh} binds {low}-{high} in its pods: port {inside} (listenPort of payments)"
    )
    # The defaults are outside every mesh's range: a meshed pod with them is injected.
    assert isinstance(decide(app_pod(**meshed), [render_bundle(policy())], **OPERATOR), Inject)
    # So is the same pod outside the mesh (sidecar.istio.io/inject=false opts it out of Istio).
    assert isinstance(decide(app_pod(), bundles, **OPERATOR), Inject)


def test_the_legacy_sidecar_ports_collide_with_istio_and_are_reported_for_a_meshed_pod() -> None:
    decision = decide(
        app_pod(labels={"sidecar.istio.io/inject": "true"}),
        [render_bundle(policy())],
        admin_port=15020,
        proxy_port=15080,
    )
    assert decision == Skip(
        "MeshPortClash", "Istio binds 15000-15090 in its pods: port 15020 (the sidecar's admin port)"
    )


def _pod_facts(name: str, annotations: dict[str, str]) -> Any:
    found = facts(
        {"metadata": {"name": name, "uid": name, "labels": {"app": "checkout"}, "annotations": annotations}}
    )
    assert found is not None
    return found


def test_port_collisions_are_a_condition_naming_the_pods_and_ports() -> None:
    bundle = render_bundle(policy(listen_port=15020))
    current = {
        "breakwater.dev/injected": "true",
        constants.ANNOTATION_SIDECAR_PORTS: "admin=15200,proxy=15201",
    }
    pods = [
        _pod_facts("new-1", current),
        _pod_facts("old-1", {"breakwater.dev/injected": "true"}),  # injected on 15020/15080, before
        _pod_facts(
            "web-1",
            {
                constants.ANNOTATION_NOT_INJECTED: "ListenPortClash: the app already declares port 15020 "
                "(listenPort of payments)"
            },
        ),
        _pod_facts(
            "mesh-1",
            {
                constants.ANNOTATION_NOT_INJECTED: "MeshPortClash: Istio binds 15000-15090 in its pods: "
                "port 15020 (listenPort of payments)"
            },
        ),
        _pod_facts(
            "host-1",
            {constants.ANNOTATION_NOT_INJECTED: "HostNetwork: hostNetwork pods share the node's ports"},
        ),
    ]
    view = view_pods("shop/payments", bundle, pods, lambda labels: resolve(dict(labels), [bundle]))
    status = desired_status(generation=1, previous=None, outcome=None, bundle=bundle, view=view).to_dict()
    (port,) = [c for c in status["conditions"] if c["type"] == "PortConflict"]
    assert (port["status"], port["reason"]) == ("True", "ListenPortCollides")
    message = port["message"]
    assert (
        "1 pod (old-1): its sidecar binds listenPort 15020 (payments) itself "
        "(injected with ports 15020 and 15080)" in message
    )
    assert "1 pod (web-1): ListenPortClash: the app already declares port 15020" in message
    assert "1 pod (mesh-1): MeshPortClash: Istio binds 15000-15090" in message
    assert "new-1" not in message
    assert "host-1" not in message
    clean = view_pods(
        "shop/payments", render_bundle(policy()), pods[:2], lambda labels: resolve(dict(labels), [bundle])
    )
    status = desired_status(
        generation=1, previous=None, outcome=None, bundle=render_bundle(policy()), view=clean
    ).to_dict()
    (port,) = [c for c in status["conditions"] if c["type"] == "PortConflict"]
    assert (port["status"], port["reason"]) == ("False", "NoPortConflict")
