"""The machine the node runs on: its kernel settings, folders and routes."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Final

from e2e import process

# Kernel settings the node's parts change (the CNI bridge plugin turns forwarding on; kubelet
# sets its kernel tunables): their values are recorded before and restored by `down`.
SYSCTLS: Final = (
    "net/ipv4/ip_forward",
    "net/bridge/bridge-nf-call-iptables",
    "net/ipv4/conf/all/route_localnet",
    "vm/overcommit_memory",
    "vm/panic_on_oom",
    "kernel/panic",
    "kernel/panic_on_oops",
    "kernel/keys/root_maxkeys",
    "kernel/keys/root_maxbytes",
)
# Machine folders that kubelet, containerd or the CNI plugins create when missing (netns mounts,
# container log links, the CNI result cache): `down` removes the ones that were absent, if empty.
HOST_DIRS: Final = (
    "/var/lib/kubelet/device-plugins",  # kubelet's device plugin socket, whatever its root dir
    "/var/lib/kubelet",
    "/var/run/netns",
    "/var/log/containers",
    "/var/lib/cni/results",
    "/var/lib/cni",
    "/run/containerd/s",
    "/run/containerd",
)


def log(message: str) -> None:
    print(f"e2e-node: {message}", file=sys.stderr, flush=True)


PROC_SYS: Final = Path("/proc/sys")


def sysctl_path(key: str) -> Path:
    return PROC_SYS / key


def sysctls() -> dict[str, str]:
    """The current values of SYSCTLS, as `restore_sysctls` takes them back."""
    return {k: sysctl_path(k).read_text().strip() for k in SYSCTLS}


def restore_sysctls(before: dict[str, str], left: dict[str, str] | None = None) -> None:
    """Put back the values `up` found (`before`). `left`: the values once `up` was done; a key
    that holds another one now was set since by another program (libvirt or podman turning
    forwarding on), whose setting it is to keep. Without `left` (an `up` that did not finish),
    every key is put back."""
    # A Docker engine started meanwhile relies on forwarding, which it turned on too.
    docker = process.running("dockerd")
    for key, value in before.items():
        path = sysctl_path(key)
        if (docker and key == "net/ipv4/ip_forward") or not path.exists():
            continue
        now = path.read_text().strip()
        if left is not None and key in left and now != left[key]:
            continue
        if now != value:
            path.write_text(value)


def absent_host_dirs() -> list[str]:
    """The HOST_DIRS that do not exist yet."""
    return [d for d in HOST_DIRS if not Path(d).exists()]


def outside_interfaces() -> list[str]:
    """The interfaces of the machine's default routes (IPv4 and IPv6)."""
    names: set[str] = set()
    for family in ("-4", "-6"):
        out = process.run("ip", "-j", family, "route", "show", "default", check=False).stdout
        for route in json.loads(out or "[]"):
            if route.get("dev"):
                names.add(str(route["dev"]))
    return sorted(names)


def default_gateway() -> str:
    """The machine's IPv4 default gateway ("" when it has none)."""
    gateway = ""
    for route in json.loads(process.run("ip", "-j", "-4", "route", "show", "default").stdout):
        gateway = route.get("gateway", "")
    return gateway
