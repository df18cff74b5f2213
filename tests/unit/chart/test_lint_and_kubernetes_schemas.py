"""The chart lints clean and renders, for every interesting set of values, objects that the
Kubernetes API schemas of the pinned version accept."""

from __future__ import annotations

import subprocess
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest

from tests.chart import CHART_DIR, kubernetes_version, render

# Custom resources kubernetes-validate has no schema for; anything else must validate.
CUSTOM_KINDS = {
    ("monitoring.coreos.com/v1", "PodMonitor"),
    ("monitoring.coreos.com/v1", "PrometheusRule"),
    ("cert-manager.io/v1", "Certificate"),
    ("cert-manager.io/v1", "Issuer"),
}
OPTIONAL_APIS = ["cert-manager.io/v1", "monitoring.coreos.com/v1"]

MATRIX: dict[str, dict[str, Any]] = {
    "defaults": {},
    "cert-manager with a self-signed issuer": {"webhook": {"certManager": {"enabled": True}}},
    "cert-manager with a cluster issuer": {
        "webhook": {
            "certManager": {
                "enabled": True,
                "issuerRef": {"name": "corp-ca", "kind": "ClusterIssuer", "group": "cert-manager.io"},
                "duration": "720h",
                "renewBefore": "240h",
            }
        }
    },
    "every namespace but some": {
        "webhook": {"injectAllNamespaces": True, "excludeNamespaces": ["monitoring", "istio-system"]}
    },
    "failure policy Fail with a longer timeout": {"webhook": {"failurePolicy": "Fail", "timeoutSeconds": 10}},
    "custom selectors": {
        "webhook": {
            "namespaceSelector": {
                "matchLabels": {"team": "payments"},
                "matchExpressions": [{"key": "env", "operator": "In", "values": ["prod", "staging"]}],
            },
            "objectSelector": {
                "matchExpressions": [{"key": "breakwater.dev/skip", "operator": "DoesNotExist"}]
            },
            "annotations": {"example.com/owner": "platform"},
        }
    },
    "pod monitor": {
        "podMonitor": {
            "enabled": True,
            "labels": {"release": "prometheus"},
            "selector": {"matchExpressions": [{"key": "app", "operator": "Exists"}]},
        }
    },
    "alerts and dashboard": {
        "prometheusRule": {
            "enabled": True,
            "labels": {"release": "prometheus"},
            "alertLabels": {"team": "platform"},
            "alerts": {"upstreamOpen": {"for": "10m", "podsFraction": 0.5}, "noLeader": {"enabled": False}},
        },
        "grafanaDashboard": {
            "enabled": True,
            "namespace": "monitoring",
            "annotations": {"grafana_folder": "Breakwater"},
        },
    },
    "no CRD": {"crds": {"install": False}},
    "CRD not kept": {"crds": {"keep": False}},
    "custom resources": {
        "resources": {"requests": {"cpu": "200m", "memory": "256Mi"}, "limits": {"cpu": 1, "memory": "1Gi"}},
        "sidecar": {"resources": {"requests": {"cpu": "5m", "memory": "32Mi"}, "limits": {"memory": "64Mi"}}},
    },
    "operator stopped": {"replicaCount": 0},
    "scheduling": {
        "nodeName": "kwok-node-0",
        "nodeSelector": {"kubernetes.io/os": "linux"},
        "tolerations": [{"key": "dedicated", "operator": "Equal", "value": "infra", "effect": "NoSchedule"}],
        "affinity": {
            "nodeAffinity": {
                "requiredDuringSchedulingIgnoredDuringExecution": {
                    "nodeSelectorTerms": [
                        {
                            "matchExpressions": [
                                {"key": "kubernetes.io/arch", "operator": "In", "values": ["amd64"]}
                            ]
                        }
                    ]
                }
            }
        },
        "topologySpreadConstraints": [
            {"maxSkew": 1, "topologyKey": "kubernetes.io/hostname", "whenUnsatisfiable": "ScheduleAnyway"}
        ],
        "priorityClassName": "system-cluster-critical",
    },
    "operator settings": {
        "operator": {
            "watchNamespaces": ["shop", "billing"],
            "verbose": True,
            "staleAfterSeconds": 12.5,
            "extraArgs": ["--report-url=https://breakwater.example:9444"],
            "extraEnv": [{"name": "TZ", "value": "UTC"}],
        }
    },
    "minAvailable budget": {"podDisruptionBudget": {"minAvailable": 1}},
    "no budget": {"podDisruptionBudget": {"enabled": False}},
    "bring your own ServiceAccount and RBAC": {
        "serviceAccount": {"create": False, "name": "platform-breakwater"},
        "rbac": {"create": False},
    },
    "images by digest": {
        "image": {"repository": "registry.example/bw", "digest": "sha256:" + "a" * 64},
        "sidecar": {
            "image": {"repository": "registry.example/bw-sidecar", "tag": "0.1.1", "pullPolicy": "Always"}
        },
        "imagePullSecrets": [{"name": "registry-creds"}],
    },
    "names and metadata": {
        "fullnameOverride": "bw",
        "commonLabels": {"team": "platform"},
        "podAnnotations": {"example.com/scrape": "true"},
        "podLabels": {"tier": "control"},
        "serviceAccount": {"annotations": {"iam.example/role": "breakwater"}},
        "service": {"annotations": {"example.com/internal": "yes"}},
    },
}


def test_the_chart_lints_clean_in_strict_mode(helm: Path, chart: Path) -> None:
    proc = subprocess.run(
        [str(helm), "lint", "--strict", str(chart)], capture_output=True, text=True, timeout=60, check=False
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "[WARNING]" not in proc.stdout, proc.stdout
    assert "[ERROR]" not in proc.stdout, proc.stdout


def test_the_chart_in_the_repository_lints_clean_too(helm: Path) -> None:
    """The real directory, as a user would lint it (with or without the generated CRD), with the one
    value every install must set."""
    proc = subprocess.run(
        [str(helm), "lint", "--strict", str(CHART_DIR), "--set", "image.repository=registry.example/bw"],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_kubernetes_validate_ships_the_schemas_of_the_pinned_version() -> None:
    major_minor = ".".join(kubernetes_version().split(".")[:2])
    shipped = {".".join(v.split(".")[:2]) for v in kubernetes_validate.utils.all_versions()}
    assert major_minor in shipped, f"kubernetes-validate lacks {major_minor}: has {sorted(shipped)}"


@pytest.mark.parametrize("values", MATRIX.values(), ids=MATRIX.keys())
def test_every_rendered_object_passes_the_kubernetes_schemas(
    helm: Path, chart: Path, values: dict[str, Any]
) -> None:
    rendered = render(helm, chart, values=values, api_versions=OPTIONAL_APIS)
    assert rendered.objects
    version = kubernetes_version()
    for obj in rendered:
        what = f"{obj['kind']}/{obj['metadata']['name']}"
        if (obj["apiVersion"], obj["kind"]) in CUSTOM_KINDS:
            continue
        try:
            kubernetes_validate.validate(obj, version, strict=True)
        except kubernetes_validate.ValidationError as exc:
            pytest.fail(f"{what} fails the Kubernetes {version} schema: {exc}")
        except kubernetes_validate.SchemaNotFoundError as exc:
            pytest.fail(f"{what}: no schema for a built-in kind? {exc}")
