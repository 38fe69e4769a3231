"""The egress guard: an nftables table of our own, installed before containerd starts, that
rejects anything from the pod range or the pod bridge that would leave by another interface, and
anything to the pod, Service or LoadBalancer ranges (before or after kube-proxy's address
translation) that would leave by the machine's outside interface(s). It runs before iptables'
filter chains, so no ACCEPT of Docker, CNI or kube-proxy can overtake it."""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Final

from e2e import addresses as net
from e2e.process import run
from e2e.render import render

TABLE: Final = "mlse2e_guard"


def ruleset(outside: Sequence[str]) -> str:
    """The guard's table for the outside interfaces `outside`, with counters for `rejected`.

    Forwarded packets (the pods') are rejected in the forward hook, so a pod's connection is
    refused at once. The machine's own packets are dropped in postrouting: in the output
    hook the outgoing interface is still the one chosen before kube-proxy's address
    translation, so a Service address would look like it leaves when it does not."""
    ifaces = ", ".join(f'"{i}"' for i in outside)
    ranges = f"{net.POD_CIDR}, {net.SERVICE_CIDR}, {net.LOAD_BALANCER_CIDR}"
    pods = f'"{net.POD_BRIDGE}"'
    # By the destination before and after translation: a Service address that kube-proxy
    # translated to an endpoint outside the node (a KWOK fake pod's or fake node's address,
    # which may be the machine's real neighbours) must not leave either.
    leaving = [
        f"oifname {{ {ifaces} }} ip daddr {{ {ranges} }}",
        f"oifname {{ {ifaces} }} ct original ip daddr {{ {ranges} }}",
        f"oifname {{ {ifaces} }} ip saddr {net.POD_CIDR}",
    ]
    forward = [
        f"iifname {pods} oifname != {pods}",
        f"ip saddr {net.POD_CIDR} oifname != {pods}",
        *leaving,
    ]
    rejects = (
        "counter meta l4proto tcp reject with tcp reset",
        "counter reject with icmpx port-unreachable",
    )
    return render(
        "guard.nft",
        table=TABLE,
        forward="\n".join(f"    {match} {r}" for match in forward for r in rejects),
        postrouting="\n".join(f"    {match} counter drop" for match in leaving),
    )


def install(outside: Sequence[str]) -> None:
    run("nft", "-f", "-", stdin=ruleset(outside))


def rejected() -> int:
    """Packets the egress guard has rejected or dropped so far."""
    out = run("nft", "-j", "list", "table", "inet", TABLE).stdout
    total = 0
    for item in json.loads(out)["nftables"]:
        for expr in item.get("rule", {}).get("expr", []):
            if "counter" in expr:
                total += int(expr["counter"]["packets"])
    return total


def remove() -> None:
    run("nft", "delete", "table", "inet", TABLE, check=False)
