"""A stricter CRD does not strand stored policies: Kubernetes' CRD validation ratcheting, measured.

A policy stored under the previous CRD (tests/cluster/data/previous-crd/, from before upstream hosts
became stricter) that the current CRD refuses, then the current CRD applied as `helm upgrade` does:
what can still be written to that policy, and what the current operator makes of it. docs/install.md
("Upgrading") says the same in words.
"""

from __future__ import annotations

import json
import os
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from breakwater.api.constants import CRD_NAME
from breakwater.api.validate import validate_text
from breakwater.injection.render import InvalidSpec, render_bundle
from tests.conftest import Cluster, own_cluster

pytestmark = pytest.mark.cluster

REPO = Path(__file__).resolve().parents[2]
PREVIOUS_CRD = (
    REPO / "tests" / "cluster" / "data" / "previous-crd" / "breakwater.dev_circuitbreakerpolicies.yaml"
)
CURRENT_CRD = REPO / "crds" / "breakwater.dev_circuitbreakerpolicies.yaml"
LONG_LABEL = "l" * 64  # a DNS label is at most 63 characters
BAD_IP = "999.999.999.999"


@pytest.fixture(scope="module")
def cluster() -> Iterator[Cluster]:
    """This module's own control plane: it replaces the CRD, which the session's suites share."""
    if os.environ.get("BREAKWATER_TEST_KUBECONFIG"):
        pytest.skip("replaces the CRD: needs its own control plane (BREAKWATER_TEST_KUBECONFIG is set)")
    with own_cluster() as own:
        yield own


def _policy(name: str, *upstreams: dict[str, Any]) -> str:
    return json.dumps(
        {
            "apiVersion": "breakwater.dev/v1alpha1",
            "kind": "CircuitBreakerPolicy",
            "metadata": {"name": name},
            "spec": {"selector": {"matchLabels": {"app": "checkout"}}, "upstreams": list(upstreams)},
        }
    )


def _upstream(name: str, host: str, listen_port: int) -> dict[str, Any]:
    return {"name": name, "host": host, "port": 8080, "listenPort": listen_port}


LEGACY = (
    _upstream("numeric", BAD_IP, 16001),
    _upstream("long", f"{LONG_LABEL}.shop.svc.cluster.local", 16002),
    _upstream("fine", "ledger.shop.svc.cluster.local", 16003),
)


POLICIES = ("writes", "edits", "operator")


def _install_crd(cluster: Cluster, path: Path) -> None:
    cluster.kubectl("apply", "--server-side", "--force-conflicts", "-f", str(path))
    cluster.wait_established(CRD_NAME)


def _patch(cluster: Cluster, namespace: str, name: str, kind: str, patch: Any, *extra: str) -> Any:
    return cluster.kubectl(
        "patch", "cbp", name, "-n", namespace, f"--type={kind}", "-p", json.dumps(patch), *extra, check=False
    )


@pytest.fixture(scope="module")
def stored(cluster: Cluster) -> Iterator[str]:
    """A namespace holding one policy per test (tests run in random order), each with the upstreams
    `LEGACY`, created under the previous CRD, now under the current one."""
    namespace = f"ratchet-{uuid.uuid4().hex[:6]}"
    _install_crd(cluster, PREVIOUS_CRD)
    cluster.kubectl("create", "namespace", namespace)
    cluster.wait_for(
        "the previous CRD served",
        lambda: cluster.kubectl("get", "cbp", "-n", namespace, check=False).returncode == 0,
    )
    for name in POLICIES:
        cluster.apply(_policy(name, *LEGACY), namespace=namespace)
    _install_crd(cluster, CURRENT_CRD)
    # The new schema is in effect once a new policy with the same upstreams is refused.
    cluster.wait_for(
        "the current CRD's validation in effect",
        lambda: (
            cluster.kubectl(
                "create",
                "--dry-run=server",
                "-n",
                namespace,
                "-f",
                "-",
                input=_policy("probe", *LEGACY),
                check=False,
            ).returncode
            != 0
        ),
        timeout=60,
    )
    yield namespace
    cluster.kubectl("delete", "namespace", namespace, "--wait=false", check=False)


def test_the_current_crd_refuses_the_stored_policy_as_a_new_one(cluster: Cluster, stored: str) -> None:
    """The control: what is stored is invalid under the current CRD, for both upstreams."""
    proc = cluster.kubectl(
        "create", "--dry-run=server", "-n", stored, "-f", "-", input=_policy("fresh", *LEGACY), check=False
    )
    assert proc.returncode != 0
    for expected in ("spec.upstreams[0].host", "IPv4 address", "spec.upstreams[1].host", "should match"):
        assert expected in proc.stderr, proc.stderr


def test_writes_that_leave_the_invalid_values_alone_are_accepted(cluster: Cluster, stored: str) -> None:
    """What the operator and kopf write (finalizers, annotations, status) and users' edits elsewhere in
    the spec pass: the API server validates only what changed (ratcheting, GA in Kubernetes 1.33)."""
    finalizer = [{"op": "add", "path": "/metadata/finalizers", "value": ["breakwater.dev/finalizer"]}]
    assert _patch(cluster, stored, "writes", "json", finalizer).returncode == 0
    annotation = {"metadata": {"annotations": {"kopf.zalando.org/last-handled-configuration": "{}"}}}
    assert _patch(cluster, stored, "writes", "merge", annotation).returncode == 0
    status = {"status": {"observedGeneration": 1}}
    proc = _patch(cluster, stored, "writes", "merge", status, "--subresource=status")
    assert proc.returncode == 0, proc.stderr
    # Spec edits: the selector, and the one valid upstream.
    proc = _patch(
        cluster, stored, "writes", "merge", {"spec": {"selector": {"matchLabels": {"app": "checkout-v2"}}}}
    )
    assert proc.returncode == 0, proc.stderr
    proc = _patch(
        cluster,
        stored,
        "writes",
        "json",
        [{"op": "replace", "path": "/spec/upstreams/2/port", "value": 8081}],
    )
    assert proc.returncode == 0, proc.stderr
    # A whole new list with the old items unchanged (a client-side apply, a merge patch) ratchets too:
    # the list is a map keyed by name, so old and new items correlate.
    upstreams = [*LEGACY, _upstream("added", "audit.shop.svc.cluster.local", 16004)]
    proc = _patch(cluster, stored, "writes", "merge", {"spec": {"upstreams": upstreams}})
    assert proc.returncode == 0, proc.stderr
    # The finalizer goes (as on deletion by the operator).
    assert (
        _patch(
            cluster, stored, "writes", "json", [{"op": "remove", "path": "/metadata/finalizers"}]
        ).returncode
        == 0
    )


def test_an_edit_of_an_invalid_upstream_must_fix_it(cluster: Cluster, stored: str) -> None:
    """Another invalid value is refused. So is any edit of the upstream whose host breaks the
    upstream-level CEL rule (the rule is on the item, and the item changed), while an edit beside a host
    that breaks the field's own pattern passes; a fixed host is accepted."""
    for index, host in ((0, "998.1.1.1"), (1, f"{LONG_LABEL}x.shop")):
        patch = [{"op": "replace", "path": f"/spec/upstreams/{index}/host", "value": host}]
        proc = _patch(cluster, stored, "edits", "json", patch)
        assert proc.returncode != 0
        assert f"spec.upstreams[{index}].host" in proc.stderr, proc.stderr
    port_of_numeric = [{"op": "replace", "path": "/spec/upstreams/0/port", "value": 8082}]
    proc = _patch(cluster, stored, "edits", "json", port_of_numeric)
    assert proc.returncode != 0
    assert "IPv4 address" in proc.stderr, proc.stderr
    port_of_long = [{"op": "replace", "path": "/spec/upstreams/1/port", "value": 8082}]
    proc = _patch(cluster, stored, "edits", "json", port_of_long)
    assert proc.returncode == 0, proc.stderr
    fixed = [{"op": "replace", "path": "/spec/upstreams/0/host", "value": "127.0.0.7"}]
    proc = _patch(cluster, stored, "edits", "json", fixed)
    assert proc.returncode == 0, proc.stderr


def test_the_current_operator_refuses_the_stored_spec(cluster: Cluster, stored: str) -> None:
    """What the upgrade does with it: the operator's own validation is the current one, so it reports
    the policy InvalidSpec (Accepted=False) and keeps the bundle the previous operator wrote, which the
    sidecars go on enforcing (controller/handlers.py, `_render_and_publish`)."""
    body = yaml.safe_load(cluster.kubectl("get", "cbp", "operator", "-n", stored, "-o", "json").stdout)
    with pytest.raises(InvalidSpec, match="upstreams"):
        render_bundle(body)


def test_breakwater_validate_finds_the_stored_policies_the_current_rules_refuse(
    cluster: Cluster, stored: str
) -> None:
    """The check docs/install.md gives before an upgrade (`kubectl get cbp -A -o yaml | breakwater
    validate -`): the stored objects, status and server fields included, judged by the current rules."""
    listed = cluster.kubectl("get", "cbp", "-n", stored, "-o", "yaml").stdout
    verdicts = validate_text(listed)
    assert len(verdicts) == len(POLICIES)
    for verdict in verdicts:
        fields = {problem.path for problem in verdict.problems}
        assert "spec.upstreams[1].host" in fields, verdict
        assert fields <= {"spec.upstreams[0].host", "spec.upstreams[1].host"}, verdict
