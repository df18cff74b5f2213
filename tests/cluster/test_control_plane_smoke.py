"""The embedded control plane is real: CRDs, controllers, kwok's kubelet, admission, helm."""

from __future__ import annotations

import ipaddress
import json
import textwrap
from pathlib import Path

import pytest

from tests.conftest import Cluster

pytestmark = pytest.mark.cluster

DATA = Path(__file__).parent / "data"

WIDGET_CRD = textwrap.dedent(
    """
    apiVersion: apiextensions.k8s.io/v1
    kind: CustomResourceDefinition
    metadata: {name: widgets.smoke.breakwater.dev}
    spec:
      group: smoke.breakwater.dev
      scope: Namespaced
      names: {plural: widgets, singular: widget, kind: Widget}
      versions:
        - name: v1
          served: true
          storage: true
          schema:
            openAPIV3Schema:
              type: object
              properties:
                spec:
                  type: object
                  properties: {size: {type: integer, minimum: 1}}
    """
)


def test_a_custom_resource_round_trips_through_the_api_server(cluster: Cluster, namespace: str) -> None:
    cluster.kubectl("apply", "-f", "-", input=WIDGET_CRD)
    cluster.wait_established("widgets.smoke.breakwater.dev")
    widget = "apiVersion: smoke.breakwater.dev/v1\nkind: Widget\nmetadata: {name: w1}\nspec: {size: 3}\n"
    cluster.kubectl("apply", "-n", namespace, "-f", "-", input=widget)

    from kubernetes import client

    api = client.CustomObjectsApi(cluster.kubernetes_client())
    obj = api.get_namespaced_custom_object("smoke.breakwater.dev", "v1", namespace, "widgets", "w1")
    assert obj["spec"] == {"size": 3}

    rejected = cluster.kubectl(
        "apply", "-n", namespace, "-f", "-", input=widget.replace("size: 3", "size: 0"), check=False
    )
    assert rejected.returncode != 0
    assert "spec.size" in rejected.stderr


def test_a_deployment_on_the_kwok_node_yields_running_pods_with_loopback_ips(
    cluster: Cluster, namespace: str
) -> None:
    deployment = textwrap.dedent(
        f"""
        apiVersion: apps/v1
        kind: Deployment
        metadata: {{name: web}}
        spec:
          replicas: 3
          selector: {{matchLabels: {{app: web}}}}
          template:
            metadata: {{labels: {{app: web}}}}
            spec:
              nodeName: {cluster.node_name}
              containers: [{{name: web, image: example.invalid/web:1}}]
        """
    )
    cluster.kubectl("apply", "-n", namespace, "-f", "-", input=deployment)

    def running_pods() -> list[dict[str, object]]:
        out = cluster.kubectl("get", "pods", "-n", namespace, "-l", "app=web", "-o", "json").stdout
        pods = json.loads(out)["items"]
        running = [p for p in pods if p["status"].get("phase") == "Running" and p["status"].get("podIP")]
        return running if len(running) == 3 else []

    pods = cluster.wait_for("3 running pods", running_pods, timeout=60)
    loopback = ipaddress.ip_network("127.0.0.0/8")
    assert all(ipaddress.ip_address(str(p["status"]["podIP"])) in loopback for p in pods)  # type: ignore[index]


def test_a_restricted_namespace_rejects_a_privileged_pod(cluster: Cluster, namespace: str) -> None:
    cluster.kubectl("label", "namespace", namespace, "pod-security.kubernetes.io/enforce=restricted")
    pod = textwrap.dedent(
        f"""
        apiVersion: v1
        kind: Pod
        metadata: {{name: root}}
        spec:
          nodeName: {cluster.node_name}
          containers:
            - name: c
              image: example.invalid/c:1
              securityContext: {{privileged: true}}
        """
    )
    result = cluster.kubectl("apply", "-n", namespace, "-f", "-", input=pod, check=False)
    assert result.returncode != 0
    assert "violates PodSecurity" in result.stderr
    assert "privileged" in result.stderr


def test_helm_installs_a_chart_against_the_control_plane(cluster: Cluster, namespace: str) -> None:
    assert "v3." in cluster.helm("version", "--short").stdout
    cluster.helm(
        "install", "smoke", str(DATA / "smoke-chart"), "-n", namespace, "--set", "greeting=hi", "--wait"
    )
    out = cluster.kubectl("get", "configmap", "smoke-smoke", "-n", namespace, "-o", "json").stdout
    assert json.loads(out)["data"] == {"greeting": "hi"}
