"""The node's certificates, all signed by kwokctl's CA: a client certificate and a kubeconfig for
each identity of the node (kubelet as `system:node:<name>`, kube-proxy, and the throwaway
cluster's admin for CoreDNS, kube-router and metrics-server), and the serving certificates the
cluster verifies (the kubelet's, metrics-server's)."""

from __future__ import annotations

from pathlib import Path

from e2e import addresses as net
from e2e import metrics_server
from e2e.certificates import sign, sign_serving
from e2e.node.layout import Layout
from e2e.render import render, render_json


def identities(node_name: str) -> dict[str, tuple[str, str]]:
    """Each client identity's (common name, organisation), by user."""
    return {
        "kubelet": (f"system:node:{node_name}", "system:nodes"),
        "kube-proxy": ("system:kube-proxy", ""),
        # CoreDNS and kube-router watch Services, EndpointSlices, Namespaces, Pods and
        # NetworkPolicies across the cluster: the throwaway cluster's admin.
        "admin": ("mlstack-e2e-node-admin", "system:masters"),
    }


def make(layout: Layout, ca: Path, api_server_port: int, node_name: str) -> None:
    """Client certificates signed by the CA in `ca`, and a kubeconfig for each; the serving
    certificates."""
    pki = layout.pki
    pki.mkdir(parents=True, exist_ok=True)
    ext = pki / "client.ext"
    ext.write_text(render("client.ext"))
    for user, (cn, org) in identities(node_name).items():
        subject = f"/O={org}/CN={cn}" if org else f"/CN={cn}"
        sign(pki, ca, user, subject, ext)
        layout.kubeconfig(user).write_text(
            render_json(
                "kubeconfig.json",
                server=f"https://127.0.0.1:{api_server_port}",
                certificate_authority=str(ca / "ca.crt"),
                user=user,
                client_certificate=str(pki / f"{user}.crt"),
                client_key=str(pki / f"{user}.key"),
            )
        )
    # Serving certificates the cluster's CA vouches for: the kubelet's at the node address
    # (metrics-server verifies it) and metrics-server's under its Service's name (the
    # aggregator verifies it).
    sign_serving(pki, ca, "kubelet-serving", f"IP:{net.NODE_ADDRESS},DNS:{node_name}")
    sign_serving(pki, ca, "metrics-server", f"DNS:{metrics_server.SERVICE_DNS}")
