"""`make demo`: Breakwater end to end on an embedded control plane, narrated.

A local control plane (etcd, kube-apiserver, kube-controller-manager, kwok), the CRD, the operator,
a policy, a client Deployment whose pods get the sidecar, a real sidecar process per pod, a flaky
upstream on loopback and steady traffic — then the upstream fails and recovers while
`kubectl get cbp -w` shows the breaker go Closed -> Open -> HalfOpen -> Closed. Ctrl-C at any point
stops every process and removes every file. All traffic stays on 127.0.0.0/8.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import signal
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from types import FrameType

from breakwater.errors import ControlPlaneError
from breakwater.testing.controlplane import ControlPlane, find_binaries, free_port
from breakwater.testing.sidecars import SidecarFleet
from breakwater.testing.upstream import FlakyUpstream

NAMESPACE = "shop"
BOLD, DIM, RESET = ("\033[1m", "\033[2m", "\033[0m") if sys.stdout.isatty() else ("", "", "")


def say(text: str) -> None:
    print(f"\n{BOLD}==> {text}{RESET}", flush=True)


def policy_manifest(upstream_port: int) -> str:
    return json.dumps(
        {
            "apiVersion": "breakwater.dev/v1alpha1",
            "kind": "CircuitBreakerPolicy",
            "metadata": {"name": "payments", "namespace": NAMESPACE},
            "spec": {
                "selector": {"matchLabels": {"app": "checkout"}},
                "upstreams": [
                    {"name": "payments", "host": "127.0.0.1", "port": upstream_port, "listenPort": 15210}
                ],
                "trip": {"consecutiveFailures": 5},
                "timeout": "2s",
                "open": {"duration": "5s", "maxDuration": "1m", "backoffMultiplier": 2, "jitter": 0},
                "halfOpen": {"permittedCalls": 2, "successesToClose": 2},
                "fallback": {"kind": "Static", "static": {"status": 503, "body": '{"degraded":true}'}},
            },
        },
        indent=2,
    )


def deployment_manifest(node: str, replicas: int) -> str:
    restricted = {
        "runAsNonRoot": True,
        "runAsUser": 1000,
        "allowPrivilegeEscalation": False,
        "capabilities": {"drop": ["ALL"]},
        "seccompProfile": {"type": "RuntimeDefault"},
    }
    return json.dumps(
        {
            "apiVersion": "apps/v1",
            "kind": "Deployment",
            "metadata": {"name": "checkout", "namespace": NAMESPACE},
            "spec": {
                "replicas": replicas,
                "selector": {"matchLabels": {"app": "checkout"}},
                "template": {
                    "metadata": {"labels": {"app": "checkout"}},
                    "spec": {
                        "nodeName": node,
                        "containers": [
                            {
                                "name": "checkout",
                                "image": "registry.example/checkout:1",
                                "securityContext": restricted,
                            }
                        ],
                    },
                },
            },
        }
    )


class Traffic:
    """Steady calls from every "app" to its sidecar's local port, counted by answer."""

    def __init__(self, urls: list[str], rate_per_url: float = 10.0) -> None:
        self.urls = urls
        self.interval = 1.0 / rate_per_url
        self.counts: dict[str, int] = {}
        self._stop = threading.Event()
        self._threads = [threading.Thread(target=self._run, args=(u,), daemon=True) for u in urls]

    def _run(self, url: str) -> None:
        while not self._stop.wait(self.interval):
            try:
                with urllib.request.urlopen(url, timeout=3) as resp:
                    key = str(resp.status)
            except urllib.error.HTTPError as exc:
                key = f"{exc.code}{' (breaker)' if exc.headers.get('x-breakwater') else ''}"
            except OSError:
                key = "error"
            self.counts[key] = self.counts.get(key, 0) + 1

    def start(self) -> Traffic:
        for thread in self._threads:
            if not thread.is_alive():
                thread.start()
        return self

    def summary(self) -> str:
        counts, self.counts = self.counts, {}
        return ", ".join(f"{n} x {k}" for k, n in sorted(counts.items())) or "no calls"

    def stop(self) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join(5)


@contextlib.contextmanager
def watching(kubectl: list[str]) -> Iterator[None]:
    """`kubectl get cbp -w` streaming to the terminal while the block runs."""
    watch = subprocess.Popen(
        [*kubectl, "get", "cbp", "-n", NAMESPACE, "-w"], stdout=sys.stdout, stderr=sys.stderr
    )
    try:
        yield
    finally:
        watch.terminate()
        watch.wait(5)


def wait_for(what: str, check: Callable[[], bool], timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check():
            return
        time.sleep(0.3)
    raise RuntimeError(f"timed out waiting for {what}")


@dataclass
class Demo:
    """What a running demo has: kubectl, the flaky upstream, the sidecars, the traffic."""

    k: Callable[..., str]
    kubectl: list[str]
    upstream: FlakyUpstream
    fleet: SidecarFleet
    traffic: Traffic
    workdir: Path


@contextlib.contextmanager
def demo_cluster(args: argparse.Namespace, policy: Callable[[int], str], what: str) -> Iterator[Demo]:
    """Control plane, CRD, operator, upstream, the policy (`policy(upstream port)`), the client pods
    with their real sidecars and traffic; everything stopped and removed on the way out (Ctrl-C included)."""
    workdir = Path(tempfile.mkdtemp(prefix="breakwater-demo-"))
    say("Building (first run only) or reusing the local control plane binaries")
    bin_dir = find_binaries(build=True)
    control_plane = ControlPlane(bin_dir=bin_dir)
    operator: subprocess.Popen[bytes] | None = None
    fleet: SidecarFleet | None = None
    traffic: Traffic | None = None
    upstream = FlakyUpstream()
    try:
        say("Starting etcd, kube-apiserver, kube-controller-manager and kwok on 127.0.0.1")
        started = time.monotonic()
        control_plane.start()
        print(f"ready in {time.monotonic() - started:.1f} s; KUBECONFIG={control_plane.kubeconfig}")
        kubectl = [str(bin_dir / "kubectl"), f"--kubeconfig={control_plane.kubeconfig}"]

        def k(*a: str, stdin: str | None = None) -> str:
            return control_plane.kubectl(*a, input=stdin)

        say("Installing the CircuitBreakerPolicy CRD")
        from breakwater.api.crdgen import crd_yaml

        k("apply", "-f", "-", stdin=crd_yaml())
        k("wait", "--for=condition=Established", "crd/circuitbreakerpolicies.breakwater.dev", "--timeout=30s")

        say("Starting the operator (webhook and report endpoint on loopback)")
        webhook_port, report_port, health = free_port(), free_port(), free_port()
        k("create", "namespace", "breakwater-system")  # holds the operator's leader Lease
        operator_log = workdir / "operator.log"
        operator = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "breakwater.cli",
                "operator",
                f"--kubeconfig={control_plane.kubeconfig}",
                f"--webhook-listen=127.0.0.1:{webhook_port}",
                f"--webhook-url=https://127.0.0.1:{webhook_port}",
                f"--report-listen=127.0.0.1:{report_port}",
                f"--report-url=https://127.0.0.1:{report_port}",
                f"--health-listen=127.0.0.1:{health}",
                f"--webhook-cert-dir={workdir / 'certs'}",
                "--sidecar-image=registry.example/breakwater:demo",
                "--stale-after-seconds=10",
            ],
            stdout=operator_log.open("wb"),
            stderr=subprocess.STDOUT,
        )
        wait_for(
            "the operator's webhook",
            lambda: (
                control_plane.kubectl("get", "mutatingwebhookconfiguration", "breakwater", check=False) != ""
            ),
        )
        print(f"operator log: {operator_log}")

        say(f"Starting a flaky upstream ('payments') on 127.0.0.1 and the namespace '{NAMESPACE}' (opted in)")
        upstream.start()
        k("create", "namespace", NAMESPACE)
        k("label", "namespace", NAMESPACE, "breakwater.dev/injection=enabled")
        wait_for(
            "the default ServiceAccount",
            lambda: bool(control_plane.kubectl("get", "sa", "default", "-n", NAMESPACE, check=False)),
        )

        say(f"Applying the policy: {what}")
        manifest = policy(upstream.port)
        print(f"{DIM}{manifest}{RESET}")
        k("apply", "-f", "-", stdin=manifest)
        wait_for(
            "Accepted",
            lambda: (
                "True"
                in k(
                    "get",
                    "cbp",
                    "payments",
                    "-n",
                    NAMESPACE,
                    "-o",
                    "jsonpath={.status.conditions[?(@.type=='Accepted')].status}",
                )
            ),
        )

        say(f"Deploying 'checkout' ({args.replicas} pods on the kwok node): the webhook injects the sidecar")
        k("apply", "-f", "-", stdin=deployment_manifest(control_plane.node_name, args.replicas))
        fleet = SidecarFleet(
            kubectl=str(bin_dir / "kubectl"), kubeconfig=control_plane.kubeconfig, namespace=NAMESPACE
        )

        def all_up() -> bool:
            assert fleet is not None
            fleet.sync()
            return len(fleet.sidecars) == int(args.replicas)

        wait_for("injected pods", all_up)
        fleet.wait_ready()
        print(k("get", "pods", "-n", NAMESPACE, "-o", "wide"))
        for sidecar in fleet.sidecars.values():
            target = f"payments (127.0.0.1:{upstream.port})"
            print(f"  sidecar of {sidecar.pod}: app calls http://{sidecar.ip}:15210 -> {target}")
        traffic = Traffic([s.url(15210) + "/charge" for s in fleet.sidecars.values()])
        yield Demo(k, kubectl, upstream, fleet, traffic, workdir)
    except RuntimeError:
        if operator is not None:
            tail = (workdir / "operator.log").read_text(errors="replace").splitlines()[-30:]
            print("--- operator log (last lines) ---\n" + "\n".join(tail), file=sys.stderr)
        raise
    finally:
        say("Cleaning up: traffic, sidecars, operator, upstream, control plane")
        with contextlib.suppress(Exception):
            if traffic is not None:
                traffic.stop()
        with contextlib.suppress(Exception):
            if fleet is not None:
                fleet.stop()
        if operator is not None and operator.poll() is None:
            operator.terminate()
            with contextlib.suppress(subprocess.TimeoutExpired):
                operator.wait(15)
            if operator.poll() is None:
                operator.kill()
        upstream.stop()
        control_plane.stop()
        import shutil

        shutil.rmtree(workdir, ignore_errors=True)
        print("done.", flush=True)


def run_guarded(body: Callable[[], int]) -> int:
    """Run a demo, turning Ctrl-C and set-up failures into an exit code and a message."""
    try:
        return body()
    except KeyboardInterrupt:
        print("\ninterrupted", flush=True)
        return 130
    except (ControlPlaneError, RuntimeError) as exc:
        print(f"\nerror: {exc}", file=sys.stderr)
        return 1


def run_demo(args: argparse.Namespace) -> int:
    def body() -> int:
        what = "trip after 5 failures in a row, stay open 5 s, then probe"
        with demo_cluster(args, policy_manifest, what) as demo:
            k, upstream, traffic = demo.k, demo.upstream, demo.traffic
            say("Driving traffic (10 calls/s per pod); watch the policy with `kubectl get cbp -w`")
            traffic.start()
            with watching(demo.kubectl):
                time.sleep(args.phase)
                print(f"{DIM}   calls: {traffic.summary()}{RESET}", flush=True)
                say("The payments backend starts failing (500s): the breakers trip and reject fast")
                upstream.failing = True
                time.sleep(args.phase + 2)
                print(f"{DIM}   calls: {traffic.summary()}{RESET}", flush=True)
                say(
                    "The backend comes back, slowly (1.5 s answers): "
                    "after 5 s open the breakers probe (HalfOpen)"
                )
                upstream.delay, upstream.failing = 1.5, False
                time.sleep(7)
                say("The backend is fast again: the trial calls succeed and the breakers close")
                upstream.delay = 0.0
                time.sleep(args.phase)
                print(f"{DIM}   calls: {traffic.summary()}{RESET}", flush=True)

            say("kubectl describe cbp payments")
            print(k("describe", "cbp", "payments", "-n", NAMESPACE))
            keep(args, demo)
        return 0

    return run_guarded(body)


def keep(args: argparse.Namespace, demo: Demo) -> None:
    if args.keep:
        kubeconfig = demo.kubectl[1].partition("=")[2]
        say(f"Still running. Try: export KUBECONFIG={kubeconfig}  (Ctrl-C to stop)")
        signal.pause()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="make demo", description=__doc__.splitlines()[0] if __doc__ else None
    )
    parser.add_argument("--replicas", type=int, default=3, help="client pods (default 3)")
    parser.add_argument("--phase", type=float, default=8.0, help="seconds per phase (default 8)")
    parser.add_argument("--keep", action="store_true", help="keep everything running until Ctrl-C")
    parser.add_argument(
        "--node",
        choices=("kwok", "real"),
        default="kwok",
        help="kwok (default, quick): sidecar processes on loopback for kwok pods; real: the chart and"
        " real pods on a real node (root; see README)",
    )
    args = parser.parse_args(argv)
    if args.node == "real":
        from breakwater.testing import demo_real

        return demo_real.main(args)

    def interrupt(signum: int, frame: FrameType | None) -> None:
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, interrupt)
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    return run_demo(args)


if __name__ == "__main__":
    sys.exit(main())
