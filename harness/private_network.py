"""Packets dropped on purpose, for the tests and benchmarks that stand in for a host that died:
nftables rules that last as long as a `with` block, and commands run in a network of their own,
whose rules and ports touch nothing else on the machine and go when the command exits."""

from __future__ import annotations

import shutil
import subprocess
from collections.abc import Iterator, Sequence
from contextlib import contextmanager

# What `in_own_network` and `dropping` run.
TOOLS = ("unshare", "ip", "nft")


def unavailable() -> str | None:
    """Why `in_own_network` and `dropping` in it cannot run here (a tool missing, user
    namespaces or nftables refused); None when they can."""
    missing = [tool for tool in TOOLS if shutil.which(tool) is None]
    if missing:
        return f"not installed: {', '.join(missing)}"
    probe = subprocess.run(
        in_own_network(["nft", "list", "tables"]), check=False, capture_output=True, text=True
    )
    if probe.returncode != 0:
        return f"no network of its own: {probe.stderr.strip() or probe.returncode}"
    return None


def in_own_network(argv: Sequence[str]) -> list[str]:
    """`argv` run in a new network namespace with its loopback up, inside a user namespace in
    which it is root (so that it may add nftables rules there) and needs no privilege here."""
    up = 'ip link set lo up && exec "$@"'
    return ["unshare", "--map-root-user", "--net", "--", "sh", "-c", up, "sh", *argv]


@contextmanager
def dropping(table: str, rules: Sequence[str]) -> Iterator[None]:
    """Packets that `rules` (nftables statements, each ending in a verdict) match dropped as they
    arrive, while inside: a table `table` of their own (family inet, an input chain), deleted
    however the block ends. The sender's TCP has sent them, as it sends to a host that died,
    and retransmits them as it would (dropped on their way out, they would not count as sent).
    In the machine's own network this needs root."""
    body = "".join(f"    {rule}\n" for rule in rules)
    ruleset = (
        f"table inet {table} {{\n  chain input {{\n"
        f"    type filter hook input priority filter; policy accept;\n{body}  }}\n}}\n"
    )
    subprocess.run(["nft", "-f", "-"], input=ruleset.encode(), check=True)
    try:
        yield
    finally:
        subprocess.run(["nft", "delete", "table", "inet", table], check=False)
