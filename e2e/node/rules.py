"""The packet filter state the node's parts leave behind (kubelet's canaries and firewall, the
CNI firewall and portmap plugins, kube-router): iptables chains, ipsets and nftables tables,
listed before `up` and removed by `down` when they are new."""

from __future__ import annotations

import json
import shlex
from typing import Final

from e2e.process import run

IPTABLES_TABLES: Final = ("filter", "nat", "mangle", "raw")
CHAIN_PREFIXES: Final = ("KUBE-", "CNI-")
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
            out = run(f"{tool}-save", "-t", table, check=False).stdout
            for line in out.splitlines():
                if line.startswith(":") and line[1:].startswith(CHAIN_PREFIXES):
                    found.add(f"{tool} {table} {line[1:].split()[0]}")
    return found


def remove_chains(before: set[str]) -> None:
    """The KUBE-* and CNI-* chains not in `before` (kubelet's canaries and firewall, the CNI
    firewall and portmap plugins'), and every rule that jumps to them."""
    doomed = sorted(our_chains() - before)
    for tool, table in {tuple(c.split()[:2]) for c in doomed}:
        names = {c.split()[2] for c in doomed if c.startswith(f"{tool} {table} ")}
        rules = run(f"{tool}-save", "-t", table, check=False).stdout.splitlines()
        for rule in rules:
            if not rule.startswith("-A "):
                continue
            parts = rule.split()
            target = parts[parts.index("-j") + 1] if "-j" in parts else ""
            if parts[1] not in names and target in names:
                run(tool, "-t", table, "-D", *shlex.split(rule[3:]), check=False)
        for name in names:
            run(tool, "-t", table, "-F", name, check=False)
        for name in names:
            run(tool, "-t", table, "-X", name, check=False)


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
