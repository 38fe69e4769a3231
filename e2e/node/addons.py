"""The cluster add-ons the node runs: CoreDNS, kube-router's NetworkPolicy controller and
metrics-server.

- CoreDNS serves the cluster zone only (no upstream exists offline), as a restricted pod in
  kube-system labelled `k8s-app: kube-dns` behind the usual `kube-system/kube-dns` Service, as
  clusters run it: the app's NetworkPolicy admits DNS to exactly those pods (a process on the
  node address would match no pod).
- kube-router: its NetworkPolicy controller only (no routing, no service proxy, no CNI).
- metrics-server: a process on the node address behind the `v1beta1.metrics.k8s.io` APIService,
  reading the kubelet, whose serving certificate kwokctl's CA signs (e2e/metrics_server.py).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Final

from components.network_policy import DnsPods
from e2e import addresses as net
from e2e import metrics_server
from e2e.controlplane import ControlPlane
from e2e.node.dns import dns_query
from e2e.node.kubelet import NAME as KUBELET
from e2e.node.layout import Layout
from e2e.node.local_images import COREDNS_IMAGE
from e2e.node.pods import RESTRICTED_CONTAINER, RESTRICTED_POD
from e2e.node.state import NodeState
from e2e.render import render

COREDNS: Final = "coredns"
KUBE_ROUTER: Final = "kube-router"


def coredns_objects(node_name: str) -> list[dict[str, Any]]:
    """CoreDNS's ServiceAccount, ClusterRole and binding, ConfigMap, Pod and the kube-dns
    Service."""
    # The namespace and labels the app's DNS egress admits by default.
    dns = DnsPods()
    labels = dict(dns.labels)
    corefile = render("Corefile", domain=net.CLUSTER_DOMAIN)
    role_rules = [
        {
            "apiGroups": [""],
            "resources": ["endpoints", "services", "pods", "namespaces"],
            "verbs": ["list", "watch"],
        },
        {
            "apiGroups": ["discovery.k8s.io"],
            "resources": ["endpointslices"],
            "verbs": ["list", "watch"],
        },
    ]
    meta = {"name": COREDNS, "namespace": dns.namespace, "labels": labels}
    return [
        {"apiVersion": "v1", "kind": "ServiceAccount", "metadata": meta},
        {
            "apiVersion": "rbac.authorization.k8s.io/v1",
            "kind": "ClusterRole",
            "metadata": {"name": f"mlstack-e2e:{COREDNS}"},
            "rules": role_rules,
        },
        {
            "apiVersion": "rbac.authorization.k8s.io/v1",
            "kind": "ClusterRoleBinding",
            "metadata": {"name": f"mlstack-e2e:{COREDNS}"},
            "roleRef": {
                "apiGroup": "rbac.authorization.k8s.io",
                "kind": "ClusterRole",
                "name": f"mlstack-e2e:{COREDNS}",
            },
            "subjects": [{"kind": "ServiceAccount", "name": COREDNS, "namespace": dns.namespace}],
        },
        {
            "apiVersion": "v1",
            "kind": "ConfigMap",
            "metadata": meta,
            "data": {"Corefile": corefile},
        },
        {
            "apiVersion": "v1",
            "kind": "Pod",
            "metadata": meta,
            "spec": {
                "nodeSelector": {"kubernetes.io/hostname": node_name},
                "serviceAccountName": COREDNS,
                "dnsPolicy": "Default",
                "priorityClassName": "system-cluster-critical",
                "terminationGracePeriodSeconds": 2,
                "securityContext": {
                    **RESTRICTED_POD,
                    "sysctls": [{"name": "net.ipv4.ip_unprivileged_port_start", "value": "53"}],
                },
                "containers": [
                    {
                        "name": COREDNS,
                        "image": COREDNS_IMAGE,
                        "imagePullPolicy": "Never",
                        "args": ["-conf", "/etc/coredns/Corefile"],
                        "ports": [
                            {"name": "dns", "containerPort": 53, "protocol": "UDP"},
                            {"name": "dns-tcp", "containerPort": 53, "protocol": "TCP"},
                        ],
                        "readinessProbe": {
                            "httpGet": {"path": "/ready", "port": 8181},
                            "periodSeconds": 1,
                        },
                        "volumeMounts": [{"name": "config", "mountPath": "/etc/coredns"}],
                        "resources": {
                            "requests": {"cpu": "10m", "memory": "32Mi"},
                            "limits": {"memory": "128Mi"},
                        },
                        "securityContext": RESTRICTED_CONTAINER,
                    }
                ],
                "volumes": [{"name": "config", "configMap": {"name": COREDNS}}],
            },
        },
        {
            "apiVersion": "v1",
            "kind": "Service",
            "metadata": {"name": "kube-dns", "namespace": dns.namespace, "labels": labels},
            "spec": {
                "clusterIP": net.DNS_SERVICE_IP,
                "selector": labels,
                "ports": [
                    {"name": "dns", "port": 53, "protocol": "UDP", "targetPort": 53},
                    {"name": "dns-tcp", "port": 53, "protocol": "TCP", "targetPort": 53},
                ],
            },
        },
    ]


def start_coredns(state: NodeState, plane: ControlPlane, node_name: str) -> None:
    """CoreDNS as a pod in kube-system behind the `kube-dns` Service, as a cluster runs it:
    the app's NetworkPolicy admits DNS to the pods of kube-system labelled `k8s-app:
    kube-dns` only (components/network_policy.py `DnsPods`), so this pod carries both.
    Non-root with no capability: the pod's own network namespace lets it bind port 53
    (`net.ipv4.ip_unprivileged_port_start`, a safe sysctl)."""
    for obj in coredns_objects(node_name):
        plane.kubectl("apply", "-f", "-", stdin=json.dumps(obj))
    name = f"kubernetes.default.svc.{net.CLUSTER_DOMAIN}"

    def answers() -> bool:
        try:
            return dns_query(net.DNS_SERVICE_IP, name, 0.5) == [net.KUBERNETES_SERVICE_IP]
        except OSError:
            return False

    state.wait("CoreDNS behind the kube-dns Service", answers, 90, KUBELET)


def start_kube_router(layout: Layout, state: NodeState, bin_dir: Path, node_name: str) -> None:
    """kube-router's NetworkPolicy controller only (no routing, no service proxy, no CNI)."""
    argv = [
        str(bin_dir / KUBE_ROUTER),
        "--run-firewall=true",
        "--run-router=false",
        "--run-service-proxy=false",
        "--run-loadbalancer=false",
        "--enable-cni=false",
        "--enable-ipv6=false",
        f"--kubeconfig={layout.kubeconfig('admin')}",
        f"--hostname-override={node_name}",
        f"--service-cluster-ip-range={net.SERVICE_CIDR}",
        "--health-port=0",
        "--metrics-port=0",
        "--v=1",
    ]
    state.spawn(KUBE_ROUTER, argv)
    log_file = layout.logs / f"{KUBE_ROUTER}.log"

    def synced() -> bool:
        return "sync iptables took" in log_file.read_text(errors="replace")

    state.wait("kube-router's first NetworkPolicy sync", synced, 60, KUBE_ROUTER)


def start_metrics_server(layout: Layout, state: NodeState, plane: ControlPlane) -> None:
    """metrics-server beside the kubelet, behind the aggregation layer. Not waited for: its
    first scrape comes one resolution (10 s) after the start, while the rest of the cluster
    comes up (`wait_for_metrics_server`)."""
    ca = plane.pki_dir
    binary = str(plane.bin_dir / metrics_server.NAME)
    state.spawn(metrics_server.NAME, metrics_server.argv(binary, layout.pki, ca))
    plane.kubectl("apply", "-f", "-", stdin=metrics_server.registration(ca))


def wait_for_metrics_server(state: NodeState, plane: ControlPlane) -> None:
    """Until the Metrics API serves the node's usage through the API server."""
    state.wait(
        "the Metrics API to serve the node's usage",
        lambda: metrics_server.node_metrics_served(plane.kubectl),
        90,
        metrics_server.NAME,
    )
