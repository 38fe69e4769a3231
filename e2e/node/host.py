"""The machine the node runs on: its commands, kernel settings, routes, mounts and processes."""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Final

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


def run(
    *argv: str, check: bool = True, stdin: str | None = None, timeout: float = 120
) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run(
        list(argv), input=stdin, capture_output=True, text=True, check=False, timeout=timeout
    )
    if check and proc.returncode != 0:
        raise RuntimeError(
            f"{' '.join(argv)} failed ({proc.returncode}):\n{proc.stdout}{proc.stderr}"
        )
    return proc


def process_running(comm: str) -> bool:
    """Whether a process whose command name is `comm` runs on the machine."""
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            with contextlib.suppress(OSError):
                if (entry / "comm").read_text().strip() == comm:
                    return True
    return False


def processes_naming(folder: Path) -> list[int]:
    """Processes (but this one) whose command line names `folder` (containerd's shims)."""
    needle = str(folder).encode()
    pids = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit() and int(entry.name) != os.getpid():
            with contextlib.suppress(OSError):
                if needle in (entry / "cmdline").read_bytes():
                    pids.append(int(entry.name))
    return pids


def sysctl_path(key: str) -> Path:
    return Path("/proc/sys") / key


def sysctls() -> dict[str, str]:
    """The current values of SYSCTLS, as `restore_sysctls` takes them back."""
    return {k: sysctl_path(k).read_text().strip() for k in SYSCTLS}


def restore_sysctls(recorded: dict[str, str]) -> None:
    # A Docker engine started meanwhile relies on forwarding, which it turned on too.
    docker = process_running("dockerd")
    for key, value in recorded.items():
        path = sysctl_path(key)
        if docker and key == "net/ipv4/ip_forward":
            continue
        if path.exists() and path.read_text().strip() != value:
            path.write_text(value)


def absent_host_dirs() -> list[str]:
    """The HOST_DIRS that do not exist yet."""
    return [d for d in HOST_DIRS if not Path(d).exists()]


def outside_interfaces() -> list[str]:
    """The interfaces of the machine's default routes (IPv4 and IPv6)."""
    names: set[str] = set()
    for family in ("-4", "-6"):
        out = run("ip", "-j", family, "route", "show", "default", check=False).stdout
        for route in json.loads(out or "[]"):
            if route.get("dev"):
                names.add(str(route["dev"]))
    return sorted(names)


def default_gateway() -> str:
    """The machine's IPv4 default gateway ("" when it has none)."""
    gateway = ""
    for route in json.loads(run("ip", "-j", "-4", "route", "show", "default").stdout):
        gateway = route.get("gateway", "")
    return gateway


def mounts_under(*roots: Path) -> list[Path]:
    """Mount points at or under any of `roots`, deepest first."""
    found: list[Path] = []
    for line in Path("/proc/self/mountinfo").read_text().splitlines():
        point = Path(line.split()[4].encode().decode("unicode_escape"))
        if any(point == r or r in point.parents for r in roots):
            found.append(point)
    return sorted(found, key=lambda p: len(p.parts), reverse=True)


def unmount_under(root: Path) -> None:
    """Unmount everything at or under `root`, lazily where a plain unmount fails."""
    for point in mounts_under(root):
        if run("umount", str(point), check=False).returncode != 0:
            run("umount", "-l", str(point), check=False)
