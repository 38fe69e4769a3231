"""The node's network on the machine: the address plan checked against the machine's routes, the
node address on a bridge with no ports (the machine has no `dummy` module) with the LoadBalancer
range routed on it, so kube-proxy's rules catch it, and the API server's forwarder: the API
server listens on 127.0.0.1 only, and a socat forwarder makes it reachable from pods at the node
address (the `kubernetes` Service's endpoint, see e2e/controlplane.py). Pods sit on the CNI
bridge plugin's bridge (e2e/node/containerd.py)."""

from __future__ import annotations

import ipaddress
import json
import socket
from pathlib import Path
from typing import Final

from e2e import addresses as net
from e2e.node.host import sysctl_path
from e2e.node.state import NodeState
from e2e.process import run

LINKS: Final = (net.POD_BRIDGE, net.NODE_BRIDGE)
API_SERVER_FORWARD: Final = "api-server-forward"


def check_address_plan() -> None:
    """Refuse to start when a range of e2e/addresses.py overlaps a route of the machine."""
    plan = [
        ipaddress.ip_network(c)
        for c in (
            f"{net.NODE_ADDRESS}/32",
            net.POD_CIDR,
            net.SERVICE_CIDR,
            net.LOAD_BALANCER_CIDR,
        )
    ]
    for route in json.loads(run("ip", "-j", "-4", "route", "show", "table", "all").stdout):
        dst = route.get("dst", "")
        if dst in ("default", "") or route.get("type") in ("local", "broadcast"):
            continue
        used = ipaddress.ip_network(dst if "/" in dst else f"{dst}/32", strict=False)
        if used.is_loopback or used.is_multicast:
            continue
        for mine in plan:
            if mine.overlaps(used):
                raise RuntimeError(f"{mine} of e2e/addresses.py overlaps the route {dst}")


def claim_node_bridge() -> bool:
    """Make the node's bridge, bare; False when it exists already. Making a link is one step of
    the kernel's: of two nodes started at once, only one makes it, so the other can refuse
    before it has made anything its own `down` would remove (the links have fixed names)."""
    made = run("ip", "link", "add", net.NODE_BRIDGE, "type", "bridge", check=False)
    if made.returncode == 0:
        return True
    if link_exists(net.NODE_BRIDGE):
        return False
    raise RuntimeError(f"ip link add {net.NODE_BRIDGE} failed: {made.stderr.strip()}")


def release_node_bridge() -> None:
    """Remove the bridge claim_node_bridge made, when the node goes no further than preflight."""
    run("ip", "link", "delete", net.NODE_BRIDGE, check=False)


def set_up_node_bridge() -> None:
    """The claimed bridge made the node's: its address, the LoadBalancer range routed on it."""
    run("ip", "addr", "add", f"{net.NODE_ADDRESS}/32", "dev", net.NODE_BRIDGE)
    run("ip", "link", "set", net.NODE_BRIDGE, "up")
    run("ip", "route", "add", net.LOAD_BALANCER_CIDR, "dev", net.NODE_BRIDGE)
    # Routing between pods, Services and the node; bridged pod-to-pod replies must pass
    # conntrack for Service NAT to be undone.
    sysctl_path("net/ipv4/ip_forward").write_text("1")
    sysctl_path("net/bridge/bridge-nf-call-iptables").write_text("1")


def forward_api_server(state: NodeState, port: int) -> None:
    """socat from the node address to the API server on 127.0.0.1, both on `port`."""
    state.spawn(
        API_SERVER_FORWARD,
        [
            "socat",
            f"TCP-LISTEN:{port},bind={net.NODE_ADDRESS},fork,reuseaddr",
            f"TCP:127.0.0.1:{port}",
        ],
    )

    def listening() -> bool:
        with socket.socket() as s:
            return s.connect_ex((net.NODE_ADDRESS, port)) == 0

    state.wait("the API server at the node address", listening, 10, API_SERVER_FORWARD)


def link_exists(name: str) -> bool:
    return Path(f"/sys/class/net/{name}").exists()


def links_left() -> list[str]:
    return [link for link in LINKS if link_exists(link)]


def remove_links() -> None:
    for link in links_left():
        run("ip", "link", "delete", link, check=False)
