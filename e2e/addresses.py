"""The address plan of the e2e cluster: every range is routed on this machine only.

The control plane (e2e/controlplane.py) and the real node (e2e/node/) both read it. None of the
ranges may overlap the machine's own networks; e2e/node/network.py checks that before the node
starts, and its egress guard (e2e/node/guard.py) rejects any packet of these ranges that would
leave through the machine's interface.
"""

from __future__ import annotations

from typing import Final

# The node's own address: a /32 on a bridge with no ports (`NODE_BRIDGE`). kubelet, kube-proxy's
# health port and CoreDNS listen here; pods reach the API server here.
NODE_ADDRESS: Final = "10.250.0.1"
NODE_BRIDGE: Final = "mlse2e-node"

# Pods: one bridge (`POD_BRIDGE`, the CNI bridge plugin's) holding the gateway address.
POD_CIDR: Final = "10.244.0.0/24"
POD_GATEWAY: Final = "10.244.0.1"
POD_BRIDGE: Final = "mlse2e-cni0"
CNI_NETWORK: Final = "mlse2e"

# Services: the API server's --service-cluster-ip-range; its first address is `kubernetes`.
SERVICE_CIDR: Final = "10.96.0.0/16"
KUBERNETES_SERVICE_IP: Final = "10.96.0.1"
DNS_SERVICE_IP: Final = "10.96.0.10"
CLUSTER_DOMAIN: Final = "cluster.local"

# LoadBalancer ingress addresses, routed on the node bridge; kube-proxy answers them. The KWOK
# stage e2e/stages/service-load-balancer.yaml gives a Service the address that mirrors its
# ClusterIP into this range (10.96.X.Y -> 10.97.X.Y): one address per Service, no allocator.
LOAD_BALANCER_CIDR: Final = "10.97.0.0/16"


def load_balancer_ip(cluster_ip: str) -> str:
    """The ingress address the KWOK stage gives a LoadBalancer Service with this ClusterIP."""
    service_prefix = SERVICE_CIDR.split(".")[:2]
    octets = cluster_ip.split(".")
    if octets[:2] != service_prefix:
        raise ValueError(f"{cluster_ip} is not in {SERVICE_CIDR}")
    return ".".join(LOAD_BALANCER_CIDR.split(".")[:2] + octets[2:])
