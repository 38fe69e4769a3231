"""containerd for the node: its own config, root, state and socket; CRI with cgroupfs and
`restrict_oom_score_adj` (the machine cannot lower oom_score_adj); the sandbox image is a static
pause program built here (e2e/node/local_images.py); `127.0.0.1:<port>` registries are pulled
over plain HTTP and any other registry resolves to a closed local port, so no pull ever leaves
the machine. Pods get their network from the CNI bridge plugin: host-local addresses, no
masquerade (nothing may leave)."""

from __future__ import annotations

import contextlib
import json
import subprocess
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Final

from e2e import addresses as net
from e2e.node.layout import Layout
from e2e.node.local_images import PAUSE_IMAGE
from e2e.node.state import NodeState
from e2e.process import run
from e2e.render import render, render_json

NAME: Final = "containerd"
CNI_BIN: Final = "/usr/lib/cni"
# Every registry but the suite's: a closed local port, so a pull fails at once and stays here.
NOWHERE: Final = "127.0.0.1:9"


def write_config(layout: Layout, registries: Sequence[str]) -> Path:
    """The registries' hosts files, the CNI network and containerd's config; returns the
    config's path."""
    base = layout.containerd
    certs = base / "certs.d"
    for registry in registries:
        d = certs / registry
        d.mkdir(parents=True, exist_ok=True)
        (d / "hosts.toml").write_text(render("registry-hosts.toml", host=registry))
    (certs / "_default").mkdir(parents=True, exist_ok=True)
    (certs / "_default" / "hosts.toml").write_text(render("registry-hosts.toml", host=NOWHERE))
    cni = layout.cni
    (cni / "net.d").mkdir(parents=True, exist_ok=True)
    write_cni(cni)
    config = base / "config.toml"
    config.write_text(
        render(
            "containerd.toml",
            base=base,
            socket=layout.containerd_socket,
            sandbox_image=PAUSE_IMAGE,
            cni_bin=CNI_BIN,
            cni_conf=cni / "net.d",
            certs=certs,
        )
    )
    return config


def write_cni(cni: Path) -> None:
    """The pods' network: the bridge plugin with host-local addresses, portmap, and the firewall
    plugin, as Docker's engine sets the FORWARD policy to DROP: that plugin lets pod traffic
    through (the egress guard still rejects what would leave the machine)."""
    (cni / "net.d" / f"10-{net.CNI_NETWORK}.conflist").write_text(
        render_json(
            "cni.conflist",
            network=net.CNI_NETWORK,
            bridge=net.POD_BRIDGE,
            subnet=net.POD_CIDR,
            gateway=net.POD_GATEWAY,
            ipam_dir=str(cni / "ipam"),
        )
    )


def start(layout: Layout, state: NodeState, registries: Sequence[str]) -> None:
    config = write_config(layout, registries)
    state.spawn(NAME, ["containerd", "--config", str(config)])
    state.wait(
        "containerd",
        lambda: ctr(layout.containerd_socket, "version", check=False).returncode == 0,
        30,
        NAME,
    )


def ctr(socket: Path, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    """containerd's `ctr` at `socket`, in the CRI's namespace (`k8s.io`)."""
    return run("ctr", "--address", str(socket), "-n", "k8s.io", *args, check=check)


def sandboxes_running(socket: Path) -> bool:
    if not socket.exists():
        return False
    return bool(ctr(socket, "tasks", "ls", "-q", check=False).stdout.strip())


def remove_containers(socket: Path) -> None:
    """Whatever kubelet left running: kill its tasks, drop its network namespaces."""
    netns: set[str] = set()
    for cid in ctr(socket, "containers", "ls", "-q", check=False).stdout.split():
        info = ctr(socket, "containers", "info", cid, check=False).stdout
        with contextlib.suppress(ValueError, KeyError, TypeError):
            spec = json.loads(info)["Spec"]
            for ns in spec["linux"]["namespaces"]:
                if ns.get("type") == "network" and ns.get("path"):
                    netns.add(ns["path"])
    for tid in ctr(socket, "tasks", "ls", "-q", check=False).stdout.split():
        ctr(socket, "tasks", "kill", "-s", "SIGKILL", tid, check=False)
    time.sleep(0.5)
    for tid in ctr(socket, "tasks", "ls", "-q", check=False).stdout.split():
        ctr(socket, "tasks", "rm", "-f", tid, check=False)
    for cid in ctr(socket, "containers", "ls", "-q", check=False).stdout.split():
        ctr(socket, "containers", "rm", cid, check=False)
    for path in sorted(netns):
        run("umount", path, check=False)
        with contextlib.suppress(OSError):
            Path(path).unlink()
