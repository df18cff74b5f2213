"""Breakwater on a real node (issue 13): apply -> injected pods Ready, trip -> `kubectl get cbp` Open,
and the sidecar's resident memory in a real pod, idle and under load.

Everything runs on `breakwater.testing.node.RealNode` (containerd + kubelet in a network namespace of
its own) with the chart installed from the image `make image` built:

- *apply -> Ready*: `kubectl apply` of a 3-replica client Deployment (the webhook injects the native
  sidecar) until all three pods are Ready, a fresh Deployment per round.
- *trip -> status*: two client pods call the backend 10 times a second each; the backend is made to
  fail; the trip is the `Closed -> Open` line each sidecar logs (its own timestamp), the status the
  moment a watch on the policy (`kubectl get cbp -w`) delivers `state: Open` with both pods open.
  The backend then heals and the breakers close before the next cycle.
- *sidecar RSS*: VmRSS of the sidecar process (PID 1 of the `breakwater-proxy` container, read from
  /proc inside it, as bench/ measures it elsewhere) in a pod whose app sends nothing, and in a pod
  whose app sends 1,000 requests/s through it (`workload load`, keep-alive connections) for 30 s.

    sudo .venv/bin/python bench/node/node_bench.py --cycles 10 --rounds 3
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import threading
import time
from datetime import datetime
from pathlib import Path
from typing import Any

from breakwater.testing import manifests
from breakwater.testing.node import RealNode, start_real_node
from breakwater.testing.nodeconfig import image_name

REPO = Path(__file__).resolve().parents[2]
RESULTS = REPO / "bench" / "results"
NS = "bench"


class Kube:
    def __init__(self, node: RealNode) -> None:
        self.argv = [str(node.control_plane_bin / "kubectl"), f"--kubeconfig={node.kubeconfig}"]
        self.helm = [str(node.control_plane_bin / "helm"), f"--kubeconfig={node.kubeconfig}"]

    def __call__(self, *args: str, stdin: str | None = None) -> str:
        proc = subprocess.run([*self.argv, *args], input=stdin, capture_output=True, text=True, check=False)
        if proc.returncode != 0:
            raise RuntimeError(f"kubectl {' '.join(args)}: {proc.stderr.strip()}")
        return proc.stdout

    def json(self, *args: str) -> Any:
        return json.loads(self(*args, "-o", "json"))

    def wait(self, what: str, check: Any, timeout: float = 120, interval: float = 0.2) -> Any:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            got = check()
            if got:
                return got
            time.sleep(interval)
        raise RuntimeError(f"timed out waiting for {what}")


def ready_count(k: Kube, selector: str) -> int:
    items = k.json("get", "pods", "-n", NS, "-l", selector)["items"]
    return sum(
        1
        for p in items
        if any(c["type"] == "Ready" and c["status"] == "True" for c in p["status"].get("conditions", []))
    )


def install(k: Kube, image: str) -> None:
    repository, _, tag = image.rpartition(":")
    k("create", "namespace", "breakwater-system")
    k("label", "namespace", "breakwater-system", *manifests.RESTRICTED_LABELS)
    subprocess.run(
        [*k.helm, "install", "breakwater", str(REPO / "charts" / "breakwater"), "-n", "breakwater-system",
         "--set", f"image.repository={repository}", "--set", f"image.tag={tag}", "--wait", "--timeout=180s"],
        check=True, capture_output=True, env={"HOME": "/tmp", "PATH": "/usr/bin:/bin"},
    )  # fmt: skip
    k("create", "namespace", NS)
    k("label", "namespace", NS, "breakwater.dev/injection=enabled", *manifests.RESTRICTED_LABELS)
    k("apply", "-f", "-", stdin=manifests.upstream(NS, image))
    k("apply", "-f", "-", stdin=manifests.policy(NS))
    k.wait("backend Ready", lambda: ready_count(k, "app=payments-backend") == 1)


def apply_to_ready(k: Kube, image: str, rounds: int) -> list[float]:
    took = []
    for i in range(rounds):
        name = f"round-{i}"
        started = time.monotonic()
        k("apply", "-f", "-", stdin=manifests.client(NS, image, replicas=3, name=name))
        k.wait(f"{name} Ready", lambda name=name: ready_count(k, f"deployment={name}") == 3, interval=0.1)
        took.append(time.monotonic() - started)
        k("delete", "deployment", name, "-n", NS, "--wait=true")
        k.wait(
            f"{name} gone",
            lambda name=name: not k.json("get", "pods", "-n", NS, "-l", f"deployment={name}")["items"],
        )
    return took


class PolicyWatch:
    """`kubectl get cbp -w -o json`: each delivered version of the policy with its arrival time."""

    def __init__(self, k: Kube) -> None:
        self.events: list[tuple[float, dict[str, Any]]] = []
        self.proc = subprocess.Popen(
            [*k.argv, "get", "cbp", "payments", "-n", NS, "-w", "-o", "json", "--output-watch-events"],
            stdout=subprocess.PIPE,
            text=True,
        )
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        buffer = ""
        decoder = json.JSONDecoder()
        for line in self.proc.stdout:
            buffer += line
            try:
                event, end = decoder.raw_decode(buffer.strip())
            except json.JSONDecodeError:
                continue
            buffer = buffer.strip()[end:]
            self.events.append((time.time(), event["object"]))

    def first_open_after(self, wall: float, pods: int) -> float | None:
        for at, obj in self.events:
            if at < wall:
                continue
            for up in (obj.get("status") or {}).get("upstreams") or ():
                if up.get("name") == "payments" and up.get("state") == "Open" and up.get("open") == pods:
                    return at
        return None

    def stop(self) -> None:
        self.proc.terminate()


def transitions(k: Kube, pod: str, to_state: str) -> list[float]:
    """Wall times of the sidecar's `-> to_state` transition lines."""
    out = k("logs", "-n", NS, pod, "-c", "breakwater-proxy")
    found = []
    for line in out.splitlines():
        with_fields = json.loads(line) if line.startswith("{") else {}
        if with_fields.get("event") == "transition" and with_fields.get("to") == to_state:
            found.append(datetime.fromisoformat(with_fields["ts"].replace("Z", "+00:00")).timestamp())
    return found


def trip_to_status(k: Kube, image: str, cycles: int) -> list[float]:
    k("apply", "-f", "-", stdin=manifests.client(NS, image, replicas=2, name="tripping"))
    k.wait("2 clients Ready", lambda: ready_count(k, "deployment=tripping") == 2)
    pods = [
        p["metadata"]["name"] for p in k.json("get", "pods", "-n", NS, "-l", "deployment=tripping")["items"]
    ]
    control = f"/api/v1/namespaces/{NS}/services/payments:{manifests.UPSTREAM_PORT}/proxy/control"

    def state() -> str:
        for up in (k.json("get", "cbp", "payments", "-n", NS).get("status") or {}).get("upstreams") or ():
            if up["name"] == "payments":
                return str(up.get("state"))
        return ""

    k.wait("Closed", lambda: state() == "Closed")
    watch = PolicyWatch(k)
    latencies = []
    try:
        for _ in range(cycles):
            before = {p: len(transitions(k, p, "Open")) for p in pods}
            k("get", "--raw", f"{control}/fail")
            k.wait("Open", lambda: state() == "Open", timeout=30)
            time.sleep(0.5)
            trips = [transitions(k, p, "Open")[before[p]] for p in pods]
            seen = watch.first_open_after(min(trips) - 1.0, len(pods))
            if seen is not None:
                latencies.append(seen - max(trips))
            k("get", "--raw", f"{control}/ok")
            k.wait("Closed", lambda: state() == "Closed", timeout=60)
            time.sleep(1.0)
    finally:
        watch.stop()
    k("delete", "deployment", "tripping", "-n", NS)
    return latencies


def vmrss_kib(k: Kube, pod: str) -> int:
    script = "print([l for l in open('/proc/1/status') if l.startswith('VmRSS')][0].split()[1])"
    return int(k("exec", "-n", NS, pod, "-c", "breakwater-proxy", "--", "python", "-c", script).strip())


def sidecar_rss(k: Kube, image: str, rps: int, seconds: int) -> dict[str, Any]:
    idle = manifests.client_pod(NS, image, "idle-app")
    doc = json.loads(idle)
    doc["spec"]["containers"][0]["command"] = ["sleep", "3600"]
    k("apply", "-f", "-", stdin=json.dumps(doc))
    load = json.loads(manifests.client_pod(NS, image, "loaded-app"))
    load["spec"]["containers"][0]["command"] = [
        *manifests.WORKLOAD, "load", "--url", "$(BREAKWATER_PAYMENTS_URL)/pay",
        "--rps", str(rps), "--seconds", str(seconds), "--connections", "8",
    ]  # fmt: skip
    k.wait("idle pod Ready", lambda: ready_count(k, "outage=yes") >= 1)
    time.sleep(5)
    idle_kib = vmrss_kib(k, "idle-app")
    k("apply", "-f", "-", stdin=json.dumps(load))
    k.wait("loaded pod Ready", lambda: ready_count(k, "outage=yes") == 2)
    time.sleep(seconds / 2)
    loaded_kib = vmrss_kib(k, "loaded-app")
    time.sleep(seconds / 2 + 3)
    log = k("logs", "-n", NS, "loaded-app", "-c", "app").strip().splitlines()
    achieved = json.loads(log[-1]) if log else {}
    return {"idle_vmrss_kib": idle_kib, "loaded_vmrss_kib": loaded_kib, "load": achieved}


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))] if ordered else float("nan")


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--cycles", type=int, default=10)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--rps", type=int, default=1000)
    parser.add_argument("--seconds", type=int, default=30)
    args = parser.parse_args()
    node = start_real_node(build=True)
    results: dict[str, Any] = {"command": " ".join(["bench/node/node_bench.py", *sys.argv[1:]])}
    try:
        k = Kube(node)
        image = image_name(node.images[0])
        install(k, image)
        ready = apply_to_ready(k, image, args.rounds)
        results["apply_to_ready_s"] = {"rounds": ready, "median": statistics.median(ready), "max": max(ready)}
        print("apply -> 3 injected pods Ready:", results["apply_to_ready_s"], flush=True)
        trips = trip_to_status(k, image, args.cycles)
        results["trip_to_status_s"] = {
            "cycles": trips, "p50": pct(trips, 0.5), "p95": pct(trips, 0.95), "max": max(trips, default=0.0)
        }  # fmt: skip
        print("trip -> status Open:", results["trip_to_status_s"], flush=True)
        results["sidecar_rss"] = sidecar_rss(k, image, args.rps, args.seconds)
        print("sidecar RSS:", results["sidecar_rss"], flush=True)
        results["image_sizes"] = node.images[0].with_name(node.images[0].name + ".sizes").read_text().strip()
    finally:
        node.stop()
        results["left_behind"] = node.leftovers()
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "node.json").write_text(json.dumps(results, indent=2) + "\n")
    print(json.dumps(results, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
