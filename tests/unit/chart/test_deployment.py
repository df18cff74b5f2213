"""The operator Deployment, its Service, PodDisruptionBudget and PodMonitor: values in, objects out.

The operator's command line is parsed by the operator's own argument parser, so the chart and
`breakwater operator` cannot drift apart unnoticed.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from breakwater.controller import settings as operator_settings
from breakwater.injection import pod as injection
from tests.chart import CHART_DIR, ChartNames, helm_template, render, settings_of

NS = "breakwater-system"


def test_the_operator_command_line_parses_into_the_in_cluster_settings(helm: Path, chart: Path) -> None:
    rendered = render(helm, chart, release="bw", namespace=NS)
    names = ChartNames("bw", NS)
    settings = settings_of(rendered)
    assert settings.operator_namespace == NS
    assert settings.watch_namespaces == ()
    assert settings.webhook_service == f"{NS}/{names.service}:443"
    assert settings.webhook_secret == f"{NS}/{names.webhook_secret}"
    assert settings.webhook_configuration == names.webhook_configuration
    assert settings.webhook_manage == "ca-only"
    assert settings.webhook_cert_dir is None
    assert (settings.webhook_listen_host, settings.webhook_listen_port) == ("0.0.0.0", 9443)
    assert (settings.report_listen_host, settings.report_listen_port) == ("0.0.0.0", 9444)
    assert settings.health_listen == "0.0.0.0:8080"
    assert (settings.lease_seconds, settings.shutdown_delay_seconds, settings.log_format) == (10, 5, "text")
    assert {"name": "POD_IP", "valueFrom": {"fieldRef": {"fieldPath": "status.podIP"}}} in rendered.container[
        "env"
    ], "the leader advertises its pod IP for relayed reports"
    assert settings.webhook_failure_policy == "Ignore"
    assert settings.webhook_timeout_seconds == 5
    assert settings.inject_all_namespaces is False
    assert settings.sidecar_image == "registry.example/breakwater:0.1.0"
    assert settings.sidecar_image_pull_policy == "IfNotPresent"
    assert settings.sidecar_resources == {
        "requests": {"cpu": "20m", "memory": "48Mi"},
        "limits": {"memory": "128Mi"},
    }
    assert settings.stale_after_seconds == 30
    service = rendered.one("Service")
    report = next(p for p in service["spec"]["ports"] if p["name"] == "report")
    assert (
        operator_settings.report_url(settings)
        == f"https://{service['metadata']['name']}.{NS}.svc:{report['port']}"
    )


def test_operator_values_reach_its_command_line(helm: Path, chart: Path) -> None:
    rendered = render(
        helm,
        chart,
        values={
            "operator": {
                "watchNamespaces": ["shop", "billing"],
                "verbose": True,
                "staleAfterSeconds": 12.5,
                "extraArgs": ["--report-url=https://bw.example:9444"],
                "extraEnv": [{"name": "TZ", "value": "UTC"}],
            },
            "sidecar": {
                "image": {"repository": "registry.example/sidecar", "tag": "1.2.3", "pullPolicy": "Always"},
                "resources": {"requests": {"cpu": "5m"}, "limits": {"cpu": "100m"}},
            },
            "ports": {"report": 19444, "health": 18080},
        },
    )
    settings = settings_of(rendered)
    assert settings.watch_namespaces == ("shop", "billing")
    assert settings.stale_after_seconds == 12.5
    assert settings.report_url == "https://bw.example:9444"
    assert settings.report_listen_port == 19444
    assert settings.health_listen == "0.0.0.0:18080"
    assert settings.sidecar_image == "registry.example/sidecar:1.2.3"
    assert settings.sidecar_image_pull_policy == "Always"
    # user values merge into the defaults, key by key
    assert settings.sidecar_resources == {
        "requests": {"cpu": "5m", "memory": "48Mi"},
        "limits": {"cpu": "100m", "memory": "128Mi"},
    }
    assert "--verbose" in rendered.operator_args
    assert {"name": "TZ", "value": "UTC"} in rendered.container["env"]
    assert rendered.container["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": "health"}
    health = next(p for p in rendered.container["ports"] if p["name"] == "health")
    assert health["containerPort"] == 18080


def test_the_sidecar_uses_the_operator_image_unless_told_otherwise(helm: Path, chart: Path) -> None:
    digest = "sha256:" + "b" * 64
    rendered = render(helm, chart, values={"image": {"repository": "registry.example/bw", "digest": digest}})
    assert rendered.container["image"] == f"registry.example/bw@{digest}"
    assert settings_of(rendered).sidecar_image == f"registry.example/bw@{digest}"  # pushed by digest only
    own_tag = {"repository": "registry.example/bw", "digest": digest}
    rendered = render(helm, chart, values={"image": own_tag, "sidecar": {"image": {"tag": "0.1.1"}}})
    assert settings_of(rendered).sidecar_image == "registry.example/bw:0.1.1"
    rendered = render(helm, chart, values={"image": {"tag": "0.2.0"}})
    assert rendered.container["image"] == "registry.example/breakwater:0.2.0"
    assert settings_of(rendered).sidecar_image == "registry.example/breakwater:0.2.0"


def test_without_an_image_repository_install_and_template_fail_pointing_at_the_docs(helm: Path) -> None:
    """No public image exists: an install must not render a default that ends in ImagePullBackOff."""
    proc = helm_template(helm, CHART_DIR)
    assert proc.returncode != 0
    assert "image.repository is required" in proc.stderr
    assert "make image" in proc.stderr
    assert "docs/install.md" in proc.stderr
    rendered = render(helm, CHART_DIR, set_values=["image.repository=registry.example/mine"])
    assert rendered.container["image"] == "registry.example/mine:0.1.0"


def test_the_pod_meets_the_restricted_pod_security_standard(helm: Path, chart: Path) -> None:
    rendered = render(helm, chart)
    pod, container = rendered.pod_spec, rendered.container
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["securityContext"]["runAsUser"] == 65532
    assert pod["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
    sc = container["securityContext"]
    assert sc["allowPrivilegeEscalation"] is False
    assert sc["readOnlyRootFilesystem"] is True
    assert sc["runAsNonRoot"] is True
    assert sc["capabilities"] == {"drop": ["ALL"]}
    assert sc["seccompProfile"] == {"type": "RuntimeDefault"}
    assert not sc.get("privileged")
    assert not any(pod.get(k) for k in ("hostNetwork", "hostPID", "hostIPC"))
    volumes = pod["volumes"]
    assert all(set(v) <= {"name", "emptyDir", "secret", "configMap", "projected"} for v in volumes), volumes
    assert all(p["containerPort"] >= 1024 for p in container["ports"]), "non-root binds no privileged port"
    tmp = next(v for v in volumes if v["name"] == "tmp")
    assert tmp["emptyDir"]["medium"] == "Memory"
    assert {"name": "tmp", "mountPath": "/tmp"} in container["volumeMounts"]


def test_two_replicas_spread_over_nodes_are_replaced_one_at_a_time(helm: Path, chart: Path) -> None:
    rendered = render(helm, chart)
    deployment = rendered.deployment
    assert deployment["spec"]["replicas"] == 2
    assert deployment["spec"]["strategy"] == {
        "type": "RollingUpdate",
        "rollingUpdate": {"maxSurge": 1, "maxUnavailable": 0},  # an old pod stops once a new one is Ready
    }
    spread = rendered.pod_spec["affinity"]["podAntiAffinity"][
        "preferredDuringSchedulingIgnoredDuringExecution"
    ]
    term = spread[0]["podAffinityTerm"]
    assert term["topologyKey"] == "kubernetes.io/hostname"
    assert term["labelSelector"]["matchLabels"] == deployment["spec"]["selector"]["matchLabels"]
    hard = render(helm, chart, values={"podAntiAffinity": "hard"}).pod_spec["affinity"]["podAntiAffinity"]
    assert list(hard) == ["requiredDuringSchedulingIgnoredDuringExecution"]
    assert "affinity" not in render(helm, chart, values={"podAntiAffinity": "none"}).pod_spec
    recreate = render(helm, chart, values={"updateStrategy": {"type": "Recreate"}}).deployment
    assert recreate["spec"]["strategy"] == {"type": "Recreate"}  # no rollingUpdate: the API refuses it
    assert render(helm, chart, values={"replicaCount": 0}).deployment["spec"]["replicas"] == 0


def test_probes_and_resources_come_from_values(helm: Path, chart: Path) -> None:
    resources = {"requests": {"cpu": "200m", "memory": "256Mi"}, "limits": {"cpu": "1", "memory": "1Gi"}}
    rendered = render(
        helm,
        chart,
        values={"resources": resources, "livenessProbe": {"periodSeconds": 30, "failureThreshold": 2}},
    )
    assert rendered.container["resources"] == resources
    probe = rendered.container["livenessProbe"]
    assert (probe["periodSeconds"], probe["failureThreshold"], probe["timeoutSeconds"]) == (30, 2, 3)
    assert rendered.container["readinessProbe"]["httpGet"]["path"] == "/readyz"
    assert rendered.container["livenessProbe"]["httpGet"]["path"] == "/healthz"
    default = render(helm, chart).container["resources"]
    assert default["requests"]
    assert default["limits"]["memory"]


def test_scheduling_values_reach_the_pod_template(helm: Path, chart: Path) -> None:
    tolerations = [{"key": "dedicated", "operator": "Exists", "effect": "NoSchedule"}]
    affinity: dict[str, Any] = {"podAntiAffinity": {"preferredDuringSchedulingIgnoredDuringExecution": []}}
    pod = render(
        helm,
        chart,
        values={
            "nodeName": "kwok-node-0",
            "nodeSelector": {"kubernetes.io/os": "linux"},
            "tolerations": tolerations,
            "affinity": affinity,
            "priorityClassName": "system-cluster-critical",
        },
    ).pod_spec
    assert pod["nodeName"] == "kwok-node-0"
    assert pod["nodeSelector"] == {"kubernetes.io/os": "linux"}
    assert pod["tolerations"] == tolerations
    assert pod["affinity"] == affinity
    assert pod["priorityClassName"] == "system-cluster-critical"
    default = render(helm, chart).pod_spec
    assert not {"nodeName", "nodeSelector", "tolerations", "priorityClassName"} & default.keys()


def test_the_operator_pod_is_never_injected_itself(helm: Path, chart: Path) -> None:
    annotations = render(helm, chart).deployment["spec"]["template"]["metadata"]["annotations"]
    assert annotations["breakwater.dev/inject"] == "false"


def test_the_service_selects_the_operator_pods_and_exposes_webhook_and_report(
    helm: Path, chart: Path
) -> None:
    rendered = render(helm, chart)
    service = rendered.one("Service")
    pod_labels = rendered.deployment["spec"]["template"]["metadata"]["labels"]
    assert service["spec"]["selector"].items() <= pod_labels.items()
    assert rendered.deployment["spec"]["selector"]["matchLabels"].items() <= pod_labels.items()
    ports = {p["name"]: (p["port"], p["targetPort"], p["protocol"]) for p in service["spec"]["ports"]}
    assert ports == {
        "webhook": (443, "webhook", "TCP"),
        "report": (9444, "report", "TCP"),  # sessions and config over HTTPS
        "report-udp": (9444, "report-udp", "UDP"),  # the signed report datagrams
    }
    container_ports = {p["name"]: p["protocol"] for p in rendered.container["ports"]}
    assert container_ports.items() >= {"webhook": "TCP", "report": "TCP", "report-udp": "UDP"}.items()


@pytest.mark.parametrize(
    ("budget", "replicas", "expected"),
    [
        ({}, 2, {"minAvailable": 1}),
        ({}, 1, {"maxUnavailable": 1}),
        ({"minAvailable": None}, 2, {"maxUnavailable": 1}),
        ({"minAvailable": None, "maxUnavailable": "50%"}, 3, {"maxUnavailable": "50%"}),
    ],
    ids=[
        "one replica always available",
        "a single replica can still be drained",
        "maxUnavailable when minAvailable is null",
        "percentage",
    ],
)
def test_the_disruption_budget(
    helm: Path, chart: Path, budget: dict[str, Any], replicas: int, expected: dict[str, Any]
) -> None:
    rendered = render(helm, chart, values={"podDisruptionBudget": budget, "replicaCount": replicas})
    spec = rendered.one("PodDisruptionBudget")["spec"]
    assert {k: v for k, v in spec.items() if k in ("minAvailable", "maxUnavailable")} == expected
    assert spec["unhealthyPodEvictionPolicy"] == "AlwaysAllow"
    assert spec["selector"]["matchLabels"] == rendered.deployment["spec"]["selector"]["matchLabels"]
    assert (
        render(helm, chart, values={"podDisruptionBudget": {"enabled": False}}).maybe("PodDisruptionBudget")
        is None
    )


@pytest.mark.parametrize(
    ("values", "message"),
    [
        (
            {"podDisruptionBudget": {"minAvailable": 2}},
            "podDisruptionBudget.minAvailable (2) must be below replicaCount (2): no replica could ever",
        ),
        (
            {"podDisruptionBudget": {"minAvailable": "100%"}},
            "podDisruptionBudget.minAvailable (100%) must be below",
        ),
        (
            {"podDisruptionBudget": {"minAvailable": None, "maxUnavailable": 0}},
            "podDisruptionBudget.maxUnavailable must not be 0",
        ),
        (
            {"updateStrategy": {"rollingUpdate": {"maxSurge": 0}}},
            "maxSurge and maxUnavailable cannot both be 0",
        ),
        (
            {"operator": {"shutdownDelaySeconds": 30}},
            "operator.shutdownDelaySeconds (30) must be below terminationGracePeriodSeconds (30)",
        ),
        (
            {"podLabels": {"app.kubernetes.io/instance": "other"}},
            "podLabels may not set app.kubernetes.io/instance: the chart sets it",
        ),
        (
            {"commonLabels": {"app.kubernetes.io/name": "shared"}},
            "commonLabels may not set app.kubernetes.io/name",
        ),
    ],
    ids=[
        "budget-equal-to-replicas",
        "budget-100-percent",
        "no-unavailable",
        "no-surge-no-unavailable",
        "delay",
        "pod-label-over-the-selector",
        "common-label-over-the-name",
    ],
)
def test_values_that_would_block_drains_rollouts_or_selectors_are_refused_by_name(
    helm: Path, chart: Path, values: dict[str, Any], message: str
) -> None:
    """Each rendered before, into a drain that waits for ever, a Deployment the API server refuses, or a
    replica killed in its shutdown delay."""
    proc = helm_template(helm, chart, values=values)
    assert proc.returncode != 0
    assert message in proc.stderr, proc.stderr


def test_the_pod_monitor_scrapes_the_admin_port_the_injected_sidecar_declares(
    helm: Path, chart: Path
) -> None:
    assert render(helm, chart).maybe("PodMonitor") is None
    rendered = render(
        helm,
        chart,
        values={"podMonitor": {"enabled": True, "labels": {"release": "prom"}, "interval": "15s"}},
        api_versions=["monitoring.coreos.com/v1"],
    )
    assert {m["metadata"]["name"] for m in rendered.all("PodMonitor")} == {
        "bw-breakwater-sidecars",
        "bw-breakwater-operator",
    }
    monitor = rendered.one("PodMonitor", "bw-breakwater-sidecars")
    assert monitor["metadata"]["labels"]["release"] == "prom"
    assert monitor["spec"]["namespaceSelector"] == {"any": True}
    assert monitor["spec"]["selector"] == {}
    endpoint = monitor["spec"]["podMetricsEndpoints"][0]
    assert (endpoint["path"], endpoint["interval"]) == ("/metrics", "15s")

    settings = settings_of(rendered)
    sidecar = injection.sidecar_container(
        injection.SidecarTemplate(image=settings.sidecar_image),
        injection.InjectionPlan(
            policies=("p",),
            listen_ports=(("payments", 15210),),
            transparent=False,
            config_hash="h",
            admin_port=settings.sidecar_admin_port,
        ),
    )
    admin = next(p for p in sidecar["ports"] if p["name"] == endpoint["port"])
    assert admin["containerPort"] == settings.sidecar_admin_port == 15200


def test_the_sidecar_ports_are_chart_values_and_must_differ(helm: Path, chart: Path) -> None:
    settings = settings_of(render(helm, chart))
    assert (settings.sidecar_admin_port, settings.sidecar_proxy_port) == (15200, 15201)
    moved = settings_of(render(helm, chart, values={"sidecar": {"adminPort": 16020, "proxyPort": 16080}}))
    assert (moved.sidecar_admin_port, moved.sidecar_proxy_port) == (16020, 16080)
    proc = helm_template(helm, chart, values={"sidecar": {"adminPort": 16020, "proxyPort": 16020}})
    assert proc.returncode != 0
    assert "sidecar.adminPort and sidecar.proxyPort must differ: both are 16020" in proc.stderr, proc.stderr
    proc = helm_template(helm, chart, values={"sidecar": {"adminPort": 80}})
    assert proc.returncode != 0
    assert "adminPort" in proc.stderr, proc.stderr


def test_the_operator_serves_metrics_on_its_port_and_its_pod_monitor_scrapes_every_replica(
    helm: Path, chart: Path
) -> None:
    rendered = render(helm, chart, release="bw", namespace=NS)
    assert settings_of(rendered).metrics_listen == ("0.0.0.0", 9090)
    container = rendered.deployment["spec"]["template"]["spec"]["containers"][0]
    assert {"name": "metrics", "containerPort": 9090, "protocol": "TCP"} in container["ports"]

    rendered = render(
        helm,
        chart,
        release="bw",
        namespace=NS,
        values={"podMonitor": {"enabled": True, "interval": "15s"}, "ports": {"metrics": 9191}},
        api_versions=["monitoring.coreos.com/v1"],
    )
    assert settings_of(rendered).metrics_listen == ("0.0.0.0", 9191)
    monitor = rendered.one("PodMonitor", "bw-breakwater-operator")
    assert monitor["spec"]["namespaceSelector"] == {"matchNames": [NS]}
    assert (
        monitor["spec"]["selector"]["matchLabels"] == rendered.deployment["spec"]["selector"]["matchLabels"]
    )
    (endpoint,) = monitor["spec"]["podMetricsEndpoints"]
    # honorLabels: a policy's series keep the policy's namespace, not the operator pod's
    assert (endpoint["port"], endpoint["path"], endpoint["honorLabels"], endpoint["interval"]) == (
        "metrics",
        "/metrics",
        True,
        "15s",
    )


@pytest.mark.parametrize(
    ("values", "api"),
    [
        ({"podMonitor": {"enabled": True}}, "monitoring.coreos.com/v1"),
        ({"prometheusRule": {"enabled": True}}, "monitoring.coreos.com/v1"),
        ({"webhook": {"certManager": {"enabled": True}}}, "cert-manager.io/v1"),
    ],
    ids=["pod monitor", "prometheus rule", "cert-manager"],
)
def test_an_option_whose_api_the_cluster_lacks_fails_with_what_to_do(
    helm: Path, chart: Path, values: dict[str, Any], api: str
) -> None:
    proc = helm_template(helm, chart, values=values)
    assert proc.returncode != 0
    assert f"needs the {api} API, which this cluster does not serve" in proc.stderr, proc.stderr


def test_a_missing_service_account_name_is_reported(helm: Path, chart: Path) -> None:
    proc = helm_template(helm, chart, values={"serviceAccount": {"create": False}})
    assert proc.returncode != 0
    assert "serviceAccount.name is required when serviceAccount.create is false" in proc.stderr


def test_every_object_carries_the_standard_labels_and_namespaced_ones_live_in_the_release_namespace(
    helm: Path, chart: Path
) -> None:
    rendered = render(
        helm,
        chart,
        release="bw",
        namespace=NS,
        values={
            "commonLabels": {"team": "platform"},
            "podMonitor": {"enabled": True},
            "prometheusRule": {"enabled": True},
            "grafanaDashboard": {"enabled": True},
        },
        api_versions=["monitoring.coreos.com/v1"],
    )
    cluster_scoped = {
        "ClusterRole",
        "ClusterRoleBinding",
        "MutatingWebhookConfiguration",
        "CustomResourceDefinition",
    }
    for obj in rendered:
        labels = obj["metadata"]["labels"]
        assert labels["app.kubernetes.io/instance"] == "bw", obj["kind"]
        assert labels["app.kubernetes.io/managed-by"] == "Helm"
        assert labels["app.kubernetes.io/part-of"] == "breakwater"
        assert labels["helm.sh/chart"] == "breakwater-0.1.0"
        assert labels["team"] == "platform"
        if obj["kind"] in cluster_scoped:
            assert "namespace" not in obj["metadata"], obj["kind"]
        else:
            assert obj["metadata"]["namespace"] == NS, obj["kind"]
