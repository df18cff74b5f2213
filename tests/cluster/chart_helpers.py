"""Install, upgrade and uninstall the Breakwater Helm chart on the test control plane.

A test that needs the operator running under the chart's RBAC installs the chart with
``install_chart(...)`` and reads the names it created from ``tests.chart.ChartNames``.
"""

from __future__ import annotations

import contextlib
import json
import subprocess
import tempfile
import uuid
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import yaml

from tests.chart import (
    CRD_NAME,
    ChartNames,
    Rendered,
    crd_is_generated,
    values_file,
)
from tests.conftest import Cluster

# -- on a cluster ----------------------------------------------------------------------------------


def install_chart(
    cluster: Cluster,
    chart: Path,
    *,
    release: str,
    namespace: str,
    values: Mapping[str, Any] | None = None,
    wait: bool = True,
    upgrade: bool = False,
    adopt_crd: bool = True,
    extra_args: Sequence[str] = (),
    timeout: float = 180,
    check: bool = True,
) -> subprocess.CompletedProcess[str]:
    """``helm install`` (or ``helm upgrade``) the chart into ``namespace`` and return helm's output.

    ``wait`` waits for the operator Deployment to be available, so pass ``nodeName`` (the kwok node)
    in ``values`` unless something else runs the operator pod. With ``adopt_crd`` a CRD already in
    the cluster (applied by another suite, or kept by an uninstalled release) is handed to this release
    first, as docs/install.md tells users to; pass ``{"crds": {"install": False}}`` to leave it alone.
    """
    if adopt_crd and (values or {}).get("crds", {}).get("install", True):
        adopt_existing_crd(cluster, release=release, namespace=namespace)
    with tempfile.TemporaryDirectory(prefix="bw-values-") as tmp:
        verb = ["upgrade", release] if upgrade else ["install", release]
        args = [
            *verb,
            str(chart),
            "--namespace",
            namespace,
            *values_file(values, Path(tmp)),
            *(["--wait", f"--timeout={int(timeout) - 10}s"] if wait else []),
            *extra_args,
        ]
        return cluster.helm(*args, timeout=timeout, check=check)


def adopt_existing_crd(cluster: Cluster, *, release: str, namespace: str) -> bool:
    """Mark an existing CRD as belonging to ``release`` so that Helm adopts it; False if there is none."""
    exists = cluster.kubectl("get", "crd", CRD_NAME, "-o", "name", check=False).returncode == 0
    if exists:
        cluster.kubectl(
            "annotate", "crd", CRD_NAME, "--overwrite",
            f"meta.helm.sh/release-name={release}", f"meta.helm.sh/release-namespace={namespace}",
        )  # fmt: skip
        cluster.kubectl("label", "crd", CRD_NAME, "--overwrite", "app.kubernetes.io/managed-by=Helm")
    return exists


def uninstall_chart(cluster: Cluster, *, release: str, namespace: str) -> subprocess.CompletedProcess[str]:
    """``helm uninstall`` and wait for the deletions."""
    return cluster.helm("uninstall", release, "--namespace", namespace, "--wait", "--timeout=60s")


def remove_leftovers(
    cluster: Cluster, names: ChartNames, *, delete_crd: bool = False, wait: bool = True
) -> None:
    """Best-effort clean-up after a failed test: uninstall, then delete the release's cluster objects.
    With ``wait=False`` the release's pods go on terminating after this returns."""
    wait_flag = ("--wait",) if wait else ()
    cluster.helm("uninstall", names.release, "--namespace", names.namespace, *wait_flag, check=False)
    selector = f"app.kubernetes.io/instance={names.release}"
    for kind in ("mutatingwebhookconfiguration", "clusterrole", "clusterrolebinding"):
        cluster.kubectl("delete", kind, "-l", selector, "--ignore-not-found", check=False)
    if delete_crd:
        cluster.kubectl("delete", "crd", CRD_NAME, "--ignore-not-found", "--wait=false", check=False)


@contextlib.contextmanager
def release_namespace(cluster: Cluster, labels: Sequence[str]) -> Iterator[ChartNames]:
    """Names for one release in a namespace of its own, created with `labels`. Afterwards the release is
    uninstalled and its namespace deleted without waiting for its pods' graceful stop: the next
    release uses other names, so nothing waits on this one's shutdown."""
    suffix = uuid.uuid4().hex[:6]
    names = ChartNames(f"bw-{suffix}", f"breakwater-{suffix}")
    cluster.kubectl("create", "namespace", names.namespace)
    cluster.kubectl("label", "namespace", names.namespace, "--overwrite", *labels)
    try:
        yield names
    finally:
        remove_leftovers(cluster, names, wait=False)
        cluster.kubectl("delete", "namespace", names.namespace, "--wait=false", check=False)


def service_account_kubeconfig(
    cluster: Cluster, names: ChartNames, dest: Path, *, duration: str = "1h"
) -> Path:
    """A kubeconfig at ``dest`` that authenticates as the chart's ServiceAccount with a fresh token, the
    identity the operator pod has in-cluster: run ``breakwater operator --kubeconfig`` with it to
    prove the chart's RBAC is enough."""
    token = cluster.kubectl(
        "create", "token", names.service_account, "-n", names.namespace, f"--duration={duration}"
    ).stdout.strip()
    admin = yaml.safe_load(cluster.kubeconfig.read_text())
    config = {
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": admin["clusters"],
        "users": [{"name": names.service_account, "user": {"token": token}}],
        "contexts": [
            {
                "name": "operator",
                "context": {
                    "cluster": admin["clusters"][0]["name"],
                    "user": names.service_account,
                    "namespace": names.namespace,
                },
            }
        ],
        "current-context": "operator",
    }
    dest.write_text(yaml.safe_dump(config))
    dest.chmod(0o600)
    return dest


def installed_operator_args(cluster: Cluster, names: ChartNames) -> list[str]:
    """The operator's command line as the installed Deployment has it (``operator`` first)."""
    out = cluster.kubectl("get", "deployment", names.deployment, "-n", names.namespace, "-o", "json").stdout
    containers: list[dict[str, Any]] = json.loads(out)["spec"]["template"]["spec"]["containers"]
    args: list[str] = next(c for c in containers if c["name"] == "operator")["args"]
    return args


def helm_release_manifest(cluster: Cluster, *, release: str, namespace: str) -> Rendered:
    """The objects helm recorded for the release."""
    proc = cluster.helm("get", "manifest", release, "--namespace", namespace)
    return Rendered.parse(proc.stdout)


# -- what every chart test installs with ---------------------------------------------------------

RESTRICTED = {
    "pod-security.kubernetes.io/enforce": "restricted",
    "pod-security.kubernetes.io/enforce-version": "latest",
    "pod-security.kubernetes.io/warn": "restricted",
    "pod-security.kubernetes.io/audit": "restricted",
}
CLUSTER_SCOPED = {
    "ClusterRole",
    "ClusterRoleBinding",
    "MutatingWebhookConfiguration",
    "CustomResourceDefinition",
}


def release_values(cluster: Cluster, names: ChartNames, **overrides: Any) -> dict[str, Any]:
    """Values every test installs with: the operator pod on the kwok node, a webhook that selects no
    namespace of any other test, and the CRD only when the generated one exists (the stand-in must never
    replace a real CRD other suites rely on)."""
    values: dict[str, Any] = {
        "nodeName": cluster.node_name,
        "image": {"repository": "registry.example/breakwater"},  # required: the chart has no default image
        "webhook": {"namespaceSelector": {"matchLabels": {"breakwater.dev/test-release": names.release}}},
        "crds": {"install": crd_is_generated()},
        # kwok reports the container Ready at once: no need to wait for probes.
        "readinessProbe": {"initialDelaySeconds": 0, "periodSeconds": 1},
    }
    for key, value in overrides.items():
        if isinstance(value, dict) and isinstance(values.get(key), dict):
            values[key] = {**values[key], **value}
        else:
            values[key] = value
    return values


def get_object(cluster: Cluster, kind: str, name: str, namespace: str | None = None) -> dict[str, Any] | None:
    args = ["get", kind, name, "-o", "json", *(["-n", namespace] if namespace else [])]
    proc = cluster.kubectl(*args, check=False)
    if proc.returncode != 0:
        assert "NotFound" in proc.stderr, proc.stderr
        return None
    obj: dict[str, Any] = json.loads(proc.stdout)
    return obj


def operator_pods(cluster: Cluster, names: ChartNames) -> list[dict[str, Any]]:
    out = cluster.kubectl("get", "pods", "-n", names.namespace, "-l", names.selector, "-o", "json").stdout
    pods: list[dict[str, Any]] = json.loads(out)["items"]
    return pods


def ready_operator_pod(cluster: Cluster, names: ChartNames) -> dict[str, Any]:
    def ready() -> dict[str, Any] | None:
        for pod in operator_pods(cluster, names):
            conditions = {c["type"]: c["status"] for c in pod.get("status", {}).get("conditions", [])}
            if pod["status"].get("phase") == "Running" and conditions.get("Ready") == "True":
                return pod
        return None

    pod: dict[str, Any] = cluster.wait_for("a Running, Ready operator pod", ready, timeout=60)
    return pod
