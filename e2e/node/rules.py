"""The packet filter state the node's parts leave behind (kubelet's canaries and firewall, the
CNI firewall and portmap plugins, kube-router): iptables chains, ipsets and nftables tables,
listed before `up` and removed by `down` when they are new."""

from __future__ import annotations

import contextlib
import ipaddress
import json
import re
import shlex
from dataclasses import dataclass
from typing import Final

from e2e import addresses as net
from e2e.process import run

IPTABLES_TABLES: Final = ("filter", "nat", "mangle", "raw")
CHAIN_PREFIXES: Final = ("KUBE-", "CNI-")
# A CNI network named in a rule's comment (the portmap plugin's `dnat name: "<network>" id: ...`).
CNI_NAME: Final = re.compile(r'name: "([^"]*)"')
PODS: Final = ipaddress.IPv4Network(net.POD_CIDR)
# kube-router's ipsets (its network policies'; "inet6:" before each name on IPv6).
IPSET_PREFIXES: Final = ("KUBE-", "kube-router-")
# The chain every kube-proxy in iptables mode sends Service traffic to, as `our_chains` lists it.
KUBE_PROXY_CHAIN: Final = "iptables nat KUBE-SERVICES"
# Tables iptables-nft makes on first use; removed by `down` if they appeared and hold no rule.
IPTABLES_NFT_TABLES: Final = ("filter", "nat", "mangle", "raw", "security")


def our_chains() -> set[str]:
    """Every KUBE-* and CNI-* chain, as `<tool> <table> <chain>`."""
    found = set()
    for tool in ("iptables", "ip6tables"):
        for table in IPTABLES_TABLES:
            for line in _save(tool, table):
                if line.startswith(":") and line[1:].startswith(CHAIN_PREFIXES):
                    found.add(f"{tool} {table} {line[1:].split()[0]}")
    return found


@dataclass(frozen=True)
class Rule:
    """One rule of an iptables-save listing: its chain first, as `iptables -A` takes it."""

    spec: tuple[str, ...]

    @property
    def chain(self) -> str:
        return self.spec[0]

    @property
    def target(self) -> str:
        for flag in ("-j", "-g"):
            if flag in self.spec[:-1]:
                return self.spec[self.spec.index(flag) + 1]
        return ""

    def networks(self) -> set[str]:
        """The CNI networks its comments name (`name: "<network>"`, the portmap plugin's)."""
        return {name for word in self.spec for name in CNI_NAME.findall(word)}

    def addresses(self) -> list[ipaddress.IPv4Network | ipaddress.IPv6Network]:
        """The addresses it names, a port after one aside: not 0.0.0.0/0, loopback nor multicast
        (the portmap plugin's rules for localhost, a plugin's for all)."""
        found = []
        for word in self.spec:
            host = word.rsplit(":", 1)[0] if word.count(":") == 1 else word
            with contextlib.suppress(ValueError):
                network = ipaddress.ip_network(host, strict=False)
                if network.prefixlen and not (network.is_multicast or network.is_loopback):
                    found.append(network)
        return found

    def pods(self) -> bool:
        """The node's: it names the pod range or the node's CNI network."""
        return net.CNI_NETWORK in self.networks() or any(
            isinstance(a, ipaddress.IPv4Network) and a.subnet_of(PODS) for a in self.addresses()
        )

    def others(self) -> bool:
        """Another CNI user's: it names an address outside the pod range, or another network."""
        return bool(self.networks() - {net.CNI_NETWORK}) or any(
            not (isinstance(a, ipaddress.IPv4Network) and a.overlaps(PODS))
            for a in self.addresses()
        )


def rules(tool: str, table: str) -> list[Rule]:
    return [
        Rule(tuple(shlex.split(line[3:]))) for line in _save(tool, table) if line.startswith("-A ")
    ]


def chains_to_remove(before: set[str]) -> set[str]:
    """The chains the node made: those not in `before`. The CNI plugins share CNI-FORWARD,
    CNI-ADMIN and CNI-HOSTPORT-* with every other CNI user on the machine: where one (nerdctl,
    say) put its containers' rules in a table while the node ran, only the chains of the node's
    pods alone go in that table, and the shared ones stay."""
    doomed = our_chains() - before
    for tool, table in {tuple(c.split()[:2]) for c in doomed}:
        listed = [rule for rule in rules(tool, table) if rule.chain.startswith("CNI-")]
        if not any(rule.others() for rule in listed):
            continue
        others = {rule.chain for rule in listed if rule.others()}
        pods_alone = {rule.chain for rule in listed if rule.pods()} - others
        prefix = f"{tool} {table} "
        doomed -= {
            chain
            for chain in doomed
            if chain.startswith(prefix + "CNI-") and chain.removeprefix(prefix) not in pods_alone
        }
    return doomed


def remove_chains(before: set[str]) -> None:
    """The chains chains_to_remove names, every rule that jumps to them, and the node's pods'
    rules in the CNI-* chains that stay (left when a pod's network was not torn down)."""
    doomed = chains_to_remove(before)
    for tool in ("iptables", "ip6tables"):
        for table in IPTABLES_TABLES:
            names = {c.split()[2] for c in doomed if c.startswith(f"{tool} {table} ")}
            for rule in rules(tool, table):
                if rule.chain in names:
                    continue
                if rule.target in names or (rule.chain.startswith("CNI-") and rule.pods()):
                    run(tool, "-t", table, "-D", *rule.spec, check=False)
            for name in names:
                run(tool, "-t", table, "-F", name, check=False)
            for name in names:
                run(tool, "-t", table, "-X", name, check=False)


def _save(tool: str, table: str) -> list[str]:
    return run(f"{tool}-save", "-t", table, check=False).stdout.splitlines()


def our_ipsets() -> list[str]:
    """Every ipset of a kube-router's naming (KUBE-SRC-*, KUBE-DST-*, kube-router-*): not one
    that firewalld, fail2ban or another tool makes meanwhile."""
    names = run("ipset", "list", "-n", check=False).stdout.split()
    return [name for name in names if name.removeprefix("inet6:").startswith(IPSET_PREFIXES)]


def remove_ipsets(before: set[str]) -> None:
    """Our ipsets not in `before` (kube-router's), once no rule refers to them."""
    for name in set(our_ipsets()) - before:
        run("ipset", "destroy", name, check=False)


def nft_tables() -> list[str]:
    """Every nftables table, as `<family> <name>`."""
    out = run("nft", "list", "tables", check=False).stdout
    return [" ".join(line.split()[1:]) for line in out.splitlines() if line.startswith("table ")]


def remove_nft_tables(before: set[str]) -> None:
    """The kube*, cni* and empty iptables-nft tables not in `before`."""
    for table in nft_tables():
        if table in before:
            continue
        family, name = table.split()
        if name in IPTABLES_NFT_TABLES:
            listing = json.loads(run("nft", "-j", "list", "table", family, name).stdout)
            if any("rule" in item for item in listing["nftables"]):
                continue
        if name in IPTABLES_NFT_TABLES or name.startswith(("kube", "cni")):
            run("nft", "delete", "table", family, name, check=False)
