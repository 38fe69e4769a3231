"""kube-proxy: iptables mode, NodePorts on the node address only, conntrack limits untouched."""

from __future__ import annotations

from pathlib import Path
from typing import Final

from e2e import addresses as net
from e2e.node.layout import Layout
from e2e.node.state import NodeState
from e2e.render import render_json
from harness.http import answers

NAME: Final = "kube-proxy"
HEALTHZ_PORT: Final = 10256


def write_config(layout: Layout, node_name: str) -> Path:
    path = layout.workdir / "kube-proxy.yaml"
    path.write_text(
        render_json(
            "kube-proxy.json",
            kubeconfig=str(layout.kubeconfig("kube-proxy")),
            hostname=node_name,
            node_address=net.NODE_ADDRESS,
            healthz_bind_address=f"{net.NODE_ADDRESS}:{HEALTHZ_PORT}",
            metrics_bind_address=f"{net.NODE_ADDRESS}:10249",
            cluster_cidr=net.POD_CIDR,
            node_port_addresses=f"{net.NODE_ADDRESS}/32",
        )
    )
    return path


def start(layout: Layout, state: NodeState, bin_dir: Path, node_name: str) -> None:
    path = write_config(layout, node_name)
    state.spawn(NAME, [str(bin_dir / NAME), f"--config={path}", "--v=1"])

    def healthy() -> bool:
        return answers(f"http://{net.NODE_ADDRESS}:{HEALTHZ_PORT}/healthz", timeout=1)

    state.wait(f"{NAME}'s /healthz to answer 200", healthy, 60, NAME)


def stop(state: NodeState) -> None:
    """Its chains and rules go with the other new KUBE-* chains (e2e/node/rules.py): not by
    `kube-proxy --cleanup`, which removes every kube-proxy chain, IPVS service and nftables
    table on the machine, whoever made them."""
    state.stop(NAME)
