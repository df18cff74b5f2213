"""The operator run locally, as the chart's Deployment would run it: the installed command line (its
listeners moved to loopback ports) and the chart's ServiceAccount token, so that what it may do is
exactly what the chart's RBAC grants.

The API server here cannot reach a Service (pod IPs are on loopback), so `route_webhooks_to` points
the chart's webhooks at the operator's loopback URL, as the Service would route in a real cluster.
"""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

from breakwater.testing.controlplane import free_port
from tests.chart import ChartNames
from tests.cluster.chart_helpers import get_object, installed_operator_args
from tests.conftest import Cluster


def with_local_listeners(args: list[str]) -> list[str]:
    """The chart's operator command line, its listeners moved to free loopback ports."""
    moved = {
        flag: f"127.0.0.1:{free_port()}"
        for flag in ("--webhook-listen", "--health-listen", "--metrics-listen", "--report-listen")
    }
    return [
        f"{a.split('=', 1)[0]}={moved[a.split('=', 1)[0]]}" if a.split("=", 1)[0] in moved else a
        for a in args
    ]


def local_flow_args(cluster: Cluster, names: ChartNames) -> tuple[list[str], str]:
    """The installed command line with loopback listeners, the webhook and the report endpoint given
    as those loopback URLs; and the webhook's URL."""
    args = with_local_listeners(installed_operator_args(cluster, names))
    listen = {a.split("=", 1)[0]: a.split("=", 1)[1] for a in args if "=" in a}
    webhook_url = f"https://{listen['--webhook-listen']}"
    args = [a for a in args if not a.startswith(("--webhook-service", "--report-url"))]
    args += [f"--webhook-url={webhook_url}", f"--report-url=https://{listen['--report-listen']}"]
    return args, webhook_url


@contextlib.contextmanager
def operator_process(args: list[str], kubeconfig: Path, log_path: Path) -> Iterator[subprocess.Popen[bytes]]:
    """`breakwater <args>` authenticated by `kubeconfig` (the chart's ServiceAccount), stopped on exit."""
    with log_path.open("a") as log:
        operator = subprocess.Popen(
            [sys.executable, "-m", "breakwater.cli", *args, f"--kubeconfig={kubeconfig}"],
            stdout=log,
            stderr=subprocess.STDOUT,
            env={**os.environ, "KUBECONFIG": str(kubeconfig)},
        )
    try:
        yield operator
    finally:
        operator.terminate()
        try:
            operator.wait(timeout=20)
        except subprocess.TimeoutExpired:
            operator.kill()
            operator.wait()


def written_ca_bundle(
    cluster: Cluster, names: ChartNames, operator: subprocess.Popen[bytes], log_path: Path
) -> str:
    """The caBundle the operator wrote into the chart's webhook configuration (waited for)."""

    def ca_bundle() -> str | None:
        mwc = get_object(cluster, "mutatingwebhookconfiguration", names.webhook_configuration)
        assert operator.poll() is None, log_path.read_text()[-3000:]
        return mwc["webhooks"][0]["clientConfig"].get("caBundle") if mwc else None

    bundle: str = cluster.wait_for("the operator to write the caBundle", ca_bundle, timeout=60)
    return bundle


def route_webhooks_to(cluster: Cluster, names: ChartNames, webhook_url: str, bundle: str) -> None:
    route = [{"op": "replace", "path": f"/webhooks/{i}/clientConfig",
              "value": {"url": f"{webhook_url}/{path}", "caBundle": bundle}}
             for i, path in enumerate(("inject-sidecar", "expect-policy"))]  # fmt: skip
    cluster.kubectl(
        "patch",
        "mutatingwebhookconfiguration",
        names.webhook_configuration,
        "--type=json",
        "-p",
        json.dumps(route),
    )
