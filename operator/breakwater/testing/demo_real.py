"""`make demo NODE=real`: the demo's story on real pods of a real node.

The node (`breakwater.testing.node`: containerd + kubelet in a network namespace of its own), the chart
installed with `helm install` from the image `make image` built, a backend Deployment behind a
Service, a three-pod client Deployment that calls it by its DNS name through the injected sidecar,
and the backend made to fail, recover slowly and heal while `kubectl get cbp -w` shows the breaker.
Ctrl-C at any point stops every process and leaves nothing behind. All traffic stays inside the
node's namespace (pods, Service IPs) or on the host's loopback (the API server's forwarded port).
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from collections import Counter
from types import FrameType

from breakwater.errors import ControlPlaneError
from breakwater.testing import manifests
from breakwater.testing.controlplane import repo_root
from breakwater.testing.demo import BOLD, DIM, NAMESPACE, RESET, say, watching
from breakwater.testing.node import RealNode, start_real_node
from breakwater.testing.nodeconfig import image_name

RELEASE, OPERATOR_NAMESPACE = "breakwater", "breakwater-system"


class Kube:
    """kubectl and helm against the node's API server."""

    def __init__(self, node: RealNode) -> None:
        self.node = node
        self.bin = node.control_plane_bin
        self.kubeconfig = node.kubeconfig

    def kubectl_argv(self) -> list[str]:
        return [str(self.bin / "kubectl"), f"--kubeconfig={self.kubeconfig}"]

    def __call__(self, *args: str, stdin: str | None = None, check: bool = True) -> str:
        proc = subprocess.run(
            [*self.kubectl_argv(), *args], input=stdin, capture_output=True, text=True, check=False
        )
        if check and proc.returncode != 0:
            raise RuntimeError(f"kubectl {' '.join(args)}: {proc.stderr.strip()}")
        return proc.stdout

    def helm(self, *args: str) -> str:
        with tempfile.TemporaryDirectory(prefix="bw-helm-") as home:
            env = {**os.environ, "HELM_CACHE_HOME": home, "HELM_CONFIG_HOME": home, "HELM_DATA_HOME": home}
            proc = subprocess.run(
                [str(self.bin / "helm"), f"--kubeconfig={self.kubeconfig}", *args],
                capture_output=True,
                text=True,
                env=env,
                check=False,
            )
        if proc.returncode != 0:
            raise RuntimeError(f"helm {' '.join(args)}: {proc.stderr.strip()}")
        return proc.stdout

    def upstream(self, verb: str) -> None:
        path = (
            f"/api/v1/namespaces/{NAMESPACE}/services/payments:{manifests.UPSTREAM_PORT}/proxy/control/{verb}"
        )
        self("get", "--raw", path)

    def calls(self) -> str:
        """What the client pods saw since the last look, summed over the pods."""
        total: Counter[str] = Counter()
        for pod in self("get", "pods", "-n", NAMESPACE, "-l", "app=checkout", "-o", "name").split():
            name = pod.split("/", 1)[1]
            path = f"/api/v1/namespaces/{NAMESPACE}/pods/{name}:{manifests.CLIENT_PORT}/proxy/stats?reset=1"
            total.update(json.loads(self("get", "--raw", path, check=False) or "{}").get("counts", {}))
        return ", ".join(f"{n} x {k}" for k, n in sorted(total.items())) or "no calls"


def run_real_demo(args: argparse.Namespace) -> int:
    root = repo_root()
    if root is None:
        print("error: `make demo NODE=real` runs from a source checkout (it installs charts/breakwater)")
        return 1
    node: RealNode | None = None
    try:
        say("Building (first run only) or reusing the control plane, node and image; starting the node")
        started = time.monotonic()
        node = start_real_node(build=True)
        print(f"node ready in {time.monotonic() - started:.1f} s; KUBECONFIG={node.kubeconfig}")
        k = Kube(node)
        image = image_name(node.images[0])
        repository, _, tag = image.rpartition(":")

        say(f"helm install of charts/breakwater with {image} into {OPERATOR_NAMESPACE} (restricted)")
        k("create", "namespace", OPERATOR_NAMESPACE)
        k("label", "namespace", OPERATOR_NAMESPACE, *manifests.RESTRICTED_LABELS)
        started = time.monotonic()
        k.helm(
            "install", RELEASE, str(root / "charts" / "breakwater"), "--namespace", OPERATOR_NAMESPACE,
            "--set", f"image.repository={repository}", "--set", f"image.tag={tag}",
            "--set", "operator.staleAfterSeconds=15", "--wait", "--timeout=180s",
        )  # fmt: skip
        print(f"operator Ready in {time.monotonic() - started:.1f} s")
        print(k("get", "pods", "-n", OPERATOR_NAMESPACE, "-o", "wide"))

        say(f"Namespace '{NAMESPACE}' (opted in), a 'payments' backend behind a Service, and the policy")
        k("create", "namespace", NAMESPACE)
        k("label", "namespace", NAMESPACE, "breakwater.dev/injection=enabled", *manifests.RESTRICTED_LABELS)
        k("apply", "-f", "-", stdin=manifests.upstream(NAMESPACE, image))
        policy = manifests.policy(
            NAMESPACE,
            trip={"consecutiveFailures": 5},
            open={"duration": "5s", "maxDuration": "1m", "backoffMultiplier": 2, "jitter": 0},
            halfOpen={"permittedCalls": 2, "successesToClose": 2},
        )
        print(f"{DIM}{json.dumps(json.loads(policy)['spec'], indent=2)}{RESET}")
        k("apply", "-f", "-", stdin=policy)

        say(f"Deploying 'checkout' ({args.replicas} pods, 10 calls/s each to payments.{NAMESPACE}.svc)")
        started = time.monotonic()
        k("apply", "-f", "-", stdin=manifests.client(NAMESPACE, image, replicas=args.replicas))
        k("rollout", "status", "-n", NAMESPACE, "deployment/checkout", "--timeout=120s")
        print(f"injected pods Ready {time.monotonic() - started:.1f} s after kubectl apply")
        print(k("get", "pods", "-n", NAMESPACE, "-o", "wide"))

        with watching(k.kubectl_argv()):
            time.sleep(args.phase)
            print(f"{DIM}   calls: {k.calls()}{RESET}", flush=True)
            say("The payments backend starts failing (500s): the breakers trip and answer the fallback")
            k.upstream("fail")
            time.sleep(args.phase + 2)
            print(f"{DIM}   calls: {k.calls()}{RESET}", flush=True)
            say(
                "The backend comes back, slowly (1.5 s answers): after 5 s open the breakers probe (HalfOpen)"
            )
            k.upstream("ok")
            k.upstream("slow?seconds=1.5")
            time.sleep(7)
            say("The backend is fast again: the trial calls succeed and the breakers close")
            k.upstream("ok")
            time.sleep(args.phase)
            print(f"{DIM}   calls: {k.calls()}{RESET}", flush=True)

        say("kubectl describe cbp payments")
        print(k("describe", "cbp", "payments", "-n", NAMESPACE))
        if args.keep:
            say(f"Still running. Try: export KUBECONFIG={node.kubeconfig}  (Ctrl-C to stop)")
            signal.pause()
        return 0
    except KeyboardInterrupt:
        print("\ninterrupted", flush=True)
        return 130
    except (ControlPlaneError, RuntimeError) as exc:
        print(f"\nerror: {exc}", file=sys.stderr)
        return 1
    finally:
        say("Cleaning up: pods, node, control plane, network namespace")
        if node is not None:
            node.stop()
            left = node.leftovers()
            print(
                f"{BOLD}left behind: {', '.join(left)}{RESET}" if left else "nothing left behind.", flush=True
            )
        print("done.", flush=True)


def main(args: argparse.Namespace) -> int:
    def interrupt(signum: int, frame: FrameType | None) -> None:
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, interrupt)
    return run_real_demo(args)
