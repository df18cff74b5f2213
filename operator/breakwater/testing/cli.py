"""`breakwater dev-cluster`: a local control plane that runs until Ctrl-C (kwok, or a real node)."""

from __future__ import annotations

import argparse
import logging
import signal
import threading
import time
from types import FrameType

from breakwater.errors import ControlPlaneError
from breakwater.testing.controlplane import ControlPlane, find_binaries
from breakwater.testing.node import RealNode, start_real_node
from breakwater.testing.nodeconfig import image_name


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--kubeconfig-out",
        help="also copy the admin kubeconfig here (it is removed again on exit)",
    )
    parser.add_argument(
        "--node",
        choices=("kwok", "real"),
        default="kwok",
        help="kwok (default): pods only look Running; real: containerd + kubelet in a network namespace"
        " of its own, with the image from `make image` imported (needs root)",
    )


def run_real(args: argparse.Namespace) -> int:
    started = time.monotonic()
    try:
        node: RealNode = start_real_node(build=True)
    except ControlPlaneError as exc:
        print(f"error: {exc}")
        return 1
    stop = threading.Event()

    def _on_signal(signum: int, frame: FrameType | None) -> None:
        stop.set()

    signal.signal(signal.SIGINT, _on_signal)
    signal.signal(signal.SIGTERM, _on_signal)
    assert node.control_plane is not None
    kubeconfig = node.kubeconfig
    if args.kubeconfig_out:
        from pathlib import Path

        Path(args.kubeconfig_out).write_text(kubeconfig.read_text())
        kubeconfig = Path(args.kubeconfig_out)
    images = ", ".join(image_name(i) for i in node.images)
    print(
        f"\nreal node ready in {time.monotonic() - started:.1f} s, "
        f"API server at {node.control_plane.server}\n"
        f"  export KUBECONFIG={kubeconfig}\n"
        f"  export PATH={node.control_plane_bin}:$PATH\n"
        f"  kubectl get nodes   # {node.node_name}, in network namespace {node.netns.name}\n"
        f"  images in containerd: {images} (imagePullPolicy IfNotPresent; nothing is pulled)\n"
        "Ctrl-C stops every process, deletes the namespace and removes every file.",
        flush=True,
    )
    try:
        while not stop.wait(1.0):
            dead = [c.name for c in node.components if c.process.poll() is not None]
            if dead:
                print(f"error: {', '.join(dead)} exited; logs follow")
                node.print_logs()
                return 1
    finally:
        print("stopping the node and the control plane ...", flush=True)
        node.stop()
        if args.kubeconfig_out:
            from pathlib import Path

            Path(args.kubeconfig_out).unlink(missing_ok=True)
        left = node.leftovers()
        print(f"left behind: {', '.join(left)}" if left else "nothing left behind.", flush=True)
    return 0


def run(args: argparse.Namespace) -> int:
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    if args.node == "real":
        return run_real(args)
    started = time.monotonic()
    try:
        bin_dir = find_binaries(build=True)
        control_plane = ControlPlane(bin_dir=bin_dir)
        print(f"starting etcd, kube-apiserver, kube-controller-manager and kwok from {bin_dir} ...")
        control_plane.start()
    except ControlPlaneError as exc:
        print(f"error: {exc}")
        return 1
    stop = threading.Event()

    def _on_signal(signum: int, frame: FrameType | None) -> None:
        stop.set()

    signal.signal(signal.SIGINT, _on_signal)
    signal.signal(signal.SIGTERM, _on_signal)
    kubeconfig = control_plane.kubeconfig
    if args.kubeconfig_out:
        from pathlib import Path

        Path(args.kubeconfig_out).write_text(kubeconfig.read_text())
        kubeconfig = Path(args.kubeconfig_out)
    print(
        f"\ncontrol plane ready in {time.monotonic() - started:.1f} s at {control_plane.server}\n"
        f"  export KUBECONFIG={kubeconfig}\n"
        f"  export PATH={bin_dir}:$PATH\n"
        f"  kubectl get nodes   # one kwok node, {control_plane.node_name}\n"
        f"  pods bound to it get IPs in {control_plane.pod_cidr}\n"
        "Ctrl-C stops every process and removes every file.",
        flush=True,
    )
    try:
        while not stop.wait(1.0):
            dead = [c.name for c in control_plane.components if c.process.poll() is not None]
            if dead:
                print(f"error: {', '.join(dead)} exited; logs follow")
                control_plane.print_logs()
                return 1
    finally:
        print("stopping the control plane ...", flush=True)
        control_plane.stop()
        if args.kubeconfig_out:
            from pathlib import Path

            Path(args.kubeconfig_out).unlink(missing_ok=True)
    return 0
