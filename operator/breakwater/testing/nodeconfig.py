"""The configuration files of the real node (`breakwater.testing.node`), written into its work
directory: the CNI bridge, containerd, the kubelet's client identity and KubeletConfiguration,
kube-proxy's configuration and CoreDNS's Corefile. Every path points inside the work directory, so two
nodes never share a file; the choices are explained in docs/design.md, "The real node"."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

from breakwater.testing.controlplane import SERVICE_CIDR, ControlPlane
from breakwater.testing.nodehost import CNI_PLUGINS, cgroup_hierarchies, cgroup_v1

NODE_NAME = "breakwater-node"
NODE_IP = "10.250.0.1"  # on the namespace's veth; pods reach it through their gateway
POD_CIDR = "10.244.0.0/24"
POD_GATEWAY = "10.244.0.1"
CLUSTER_DOMAIN = "cluster.local"


def image_name(archive: Path) -> str:
    """The name an archive's image is imported under (`NAME.ref` next to it)."""
    ref = archive.with_name(archive.name + ".ref")
    return ref.read_text().strip() if ref.is_file() else ""


def write_node_configs(
    *,
    workdir: Path,
    control_plane: ControlPlane,
    node_name: str,
    node_bin: Path,
    cgroup_name: str,
    containerd_socket: Path,
    progress: Callable[[str], None],
) -> None:
    assert control_plane is not None
    cp = control_plane
    ca = cp.ca
    assert ca is not None
    w = workdir
    for sub in (
        "cni/net.d",
        "cni/ipam",
        "kubelet",
        "pod-logs",
        "containerd/root",
        "containerd/state",
        "runc",
    ):
        (w / sub).mkdir(parents=True, exist_ok=True)
    cni = {
        "cniVersion": "1.0.0",
        "name": "breakwater",
        "plugins": [
            {
                "type": "bridge",
                "bridge": "cni0",
                "isGateway": True,
                "ipMasq": False,
                "hairpinMode": True,
                "ipam": {
                    "type": "host-local",
                    "dataDir": str(w / "cni" / "ipam"),
                    "ranges": [[{"subnet": POD_CIDR, "gateway": POD_GATEWAY}]],
                    # No default route in pods either: the Service range and the node, nothing else.
                    "routes": [{"dst": SERVICE_CIDR}, {"dst": f"{NODE_IP}/32"}],
                },
            }
        ],
    }
    (w / "cni" / "net.d" / "10-breakwater.conflist").write_text(json.dumps(cni, indent=2))
    pause = image_name(node_bin / "pause.oci.tar") or "registry.k8s.io/pause:3.10.1"
    (w / "containerd.toml").write_text(
        f"""version = 2
root = "{w / "containerd" / "root"}"
state = "{w / "containerd" / "state"}"
[grpc]
  address = "{containerd_socket}"
[ttrpc]
  address = "{containerd_socket}.ttrpc"
[metrics]
  address = ""
[plugins."io.containerd.grpc.v1.cri"]
  sandbox_image = "{pause}"
  # root here lacks CAP_SYS_RESOURCE: a negative oom_score_adj would kill every sandbox at start.
  restrict_oom_score_adj = true
  enable_selinux = false
  [plugins."io.containerd.grpc.v1.cri".containerd]
snapshotter = "overlayfs"
default_runtime_name = "runc"
[plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc]
  runtime_type = "io.containerd.runc.v2"
  [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc.options]
    SystemdCgroup = false
    Root = "{w / "runc"}"
  [plugins."io.containerd.grpc.v1.cri".cni]
bin_dir = "{CNI_PLUGINS}"
conf_dir = "{w / "cni" / "net.d"}"
[plugins."io.containerd.internal.v1.opt"]
  path = "{w / "containerd" / "opt"}"
"""
    )
    # Client certificates: the kubelet as a node (the Node authorizer), kube-proxy and CoreDNS as admin.
    ca.issue(f"system:node:{node_name}", organizations=("system:nodes",), client=True).write(
        w, "kubelet-client"
    )
    kubelet_kubeconfig = cp.kubeconfig.read_text()
    kubelet_kubeconfig = kubelet_kubeconfig.replace(
        str(cp.workdir / "admin.crt"), str(w / "kubelet-client.crt")
    ).replace(str(cp.workdir / "admin.key"), str(w / "kubelet-client.key"))
    (w / "kubelet.kubeconfig").write_text(kubelet_kubeconfig)
    (w / "resolv.conf").write_text("")  # pods with dnsPolicy Default get no resolver at all
    failcgroupv1 = cgroup_v1()
    if failcgroupv1:
        progress("cgroup v1 host: kubelet needs failCgroupV1=false (set)")
    for hierarchy in cgroup_hierarchies():
        (hierarchy / cgroup_name).mkdir(exist_ok=True)
    (w / "kubelet.yaml").write_text(
        json.dumps(
            {
                "apiVersion": "kubelet.config.k8s.io/v1beta1",
                "kind": "KubeletConfiguration",
                "failCgroupV1": not failcgroupv1,
                "cgroupDriver": "cgroupfs",
                "cgroupRoot": f"/{cgroup_name}",
                "containerRuntimeEndpoint": f"unix://{containerd_socket}",
                "address": NODE_IP,
                "healthzBindAddress": "127.0.0.1",
                "authentication": {
                    "anonymous": {"enabled": False},
                    "webhook": {"enabled": False},
                    "x509": {"clientCAFile": str(cp.ca_file)},
                },
                # A throw-away node: any client with a certificate of the test CA may use it.
                "authorization": {"mode": "AlwaysAllow"},
                "clusterDNS": [NODE_IP],
                "clusterDomain": CLUSTER_DOMAIN,
                "resolvConf": str(w / "resolv.conf"),
                "podLogsDir": str(w / "pod-logs"),
                "failSwapOn": False,
                "protectKernelDefaults": False,
                "serializeImagePulls": False,
                "evictionHard": {
                    "memory.available": "100Mi",
                    "nodefs.available": "1%",
                    "imagefs.available": "1%",
                },
                "imageGCHighThresholdPercent": 100,
                "syncFrequency": "10s",
                "fileCheckFrequency": "20s",
                "nodeStatusReportFrequency": "10s",
                "registerNode": True,
                "maxPods": 60,
                "staticPodPath": "",
                "rotateCertificates": False,
                "serverTLSBootstrap": False,
            }
        )
    )
    (w / "kube-proxy.yaml").write_text(
        json.dumps(
            {
                "apiVersion": "kubeproxy.config.k8s.io/v1alpha1",
                "kind": "KubeProxyConfiguration",
                "clientConnection": {"kubeconfig": str(cp.kubeconfig)},
                "hostnameOverride": node_name,
                "mode": "iptables",
                "clusterCIDR": POD_CIDR,
                "bindAddress": NODE_IP,
                "healthzBindAddress": "127.0.0.1:10256",
                "metricsBindAddress": "127.0.0.1:10249",
                # Masquerade Service traffic to the bridge address, so a reply between two pods of
                # the bridge comes back through conntrack even where bridged frames skip iptables.
                "iptables": {"masqueradeAll": True, "syncPeriod": "10s", "minSyncPeriod": "0s"},
                # Leave machine-wide conntrack limits alone (0: do not set).
                "conntrack": {
                    "maxPerCore": 0,
                    "min": 0,
                    "tcpEstablishedTimeout": "0s",
                    "tcpCloseWaitTimeout": "0s",
                },
            }
        )
    )
    (w / "Corefile").write_text(
        f"""{CLUSTER_DOMAIN}:53 in-addr.arpa:53 ip6.arpa:53 {{
errors
health 127.0.0.1:8181
ready 127.0.0.1:8182
kubernetes {CLUSTER_DOMAIN} in-addr.arpa ip6.arpa {{
    kubeconfig {cp.kubeconfig}
    pods insecure
    ttl 5
}}
cache 5
}}
"""
    )
