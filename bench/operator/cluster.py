"""The control plane sized for thousands of kwok pods, and the benchmark's control plane + operator.

Everything talks to 127.0.0.0/8 only.
"""

from __future__ import annotations

import contextlib
import random
import shutil
import signal
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from measure import log

from breakwater.api.crdgen import crd_yaml
from breakwater.testing.controlplane import ControlPlane, find_binaries
from breakwater.testing.operator import OperatorProcess

BIG_POD_POOL = range(16, 32)  # 127.16.0.0/12: a benchmark takes a random /16 of it (65,534 pod IPs)


# -- the control plane -------------------------------------------------------------------------------


@dataclass
class BenchControlPlane(ControlPlane):
    """The test control plane with a kube-controller-manager allowed to create pods quickly.

    The default client rate of kube-controller-manager (20 qps, burst 30) would take 8 minutes to
    create 10,000 pods; the benchmarks raise it (a bench-only subclass: nothing else changes).
    """

    kcm_qps: int = 400

    def __post_init__(self) -> None:
        super().__post_init__()
        self.controller_manager_args = (
            f"--kube-api-qps={self.kcm_qps}",
            f"--kube-api-burst={2 * self.kcm_qps}",
            "--concurrent-replicaset-syncs=20",
            "--concurrent-deployment-syncs=20",
        )

    @property
    def pids(self) -> dict[str, int]:
        return {c.name: c.process.pid for c in self.components}


def start_control_plane(*, big: bool = False) -> BenchControlPlane:
    started = time.monotonic()
    cp = BenchControlPlane(bin_dir=find_binaries(build=True))
    if big:  # more than a /24's worth of pods; a random /16 so two benchmarks can run side by side
        second = random.choice(BIG_POD_POOL)
        cp.pod_cidr, cp.node_ip = f"127.{second}.0.0/16", f"127.{second}.0.1"
    cp.start()
    cp.kubectl("apply", "--server-side", "--force-conflicts", "-f", "-", input=crd_yaml())
    cp.kubectl(
        "wait", "--for=condition=Established", "crd/circuitbreakerpolicies.breakwater.dev", "--timeout=30s"
    )
    node_cidr = cp.kubectl("get", "node", cp.node_name, "-o", "jsonpath={.spec.podCIDR}")
    log(f"control plane up in {time.monotonic() - started:.1f} s (node podCIDR {node_cidr})")
    return cp


def _interrupt(signum: int, frame: Any) -> None:
    raise KeyboardInterrupt


@dataclass
class Bench:
    """The control plane, the operator and a scratch directory, closed together."""

    cp: BenchControlPlane
    operator: OperatorProcess
    workdir: Path

    @classmethod
    def start(
        cls, *, big: bool = False, operator_args: tuple[str, ...] = (), launcher: tuple[str, ...] = ()
    ) -> Bench:
        # SIGTERM unwinds like Ctrl-C, so every `finally` (sidecars, operator, control plane) runs.
        signal.signal(signal.SIGTERM, _interrupt)
        cp = start_control_plane(big=big)
        workdir = Path(tempfile.mkdtemp(prefix="breakwater-bench-"))
        op = OperatorProcess(
            cp.kubeconfig,
            cp.binary("kubectl"),
            workdir,
            extra_args=operator_args,
            launcher=launcher or ("-m", "breakwater.cli"),
            sidecar_image="registry.example/breakwater:bench",
        )
        try:
            op.start()
        except BaseException:
            op.stop()
            cp.stop()
            raise
        return cls(cp, op, workdir)

    def close(self) -> None:
        self.operator.cleanup()
        self.cp.stop()

        kept = Path(tempfile.gettempdir()) / "breakwater-bench-operator.log"
        with contextlib.suppress(OSError):
            shutil.copy(self.operator.log_path, kept)
            log(f"the operator's log is kept in {kept}")
        shutil.rmtree(self.workdir, ignore_errors=True)
