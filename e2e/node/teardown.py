"""What `down` does beyond stopping each part: the node's pods drained through the API while
kubelet runs, the machine's folders and files the runtime left, and the node's folder."""

from __future__ import annotations

import contextlib
import os
import shutil
from pathlib import Path
from typing import Any

from e2e import addresses as net
from e2e.controlplane import ControlPlane
from e2e.node.containerd import sandboxes_running
from e2e.node.layout import Layout
from harness.poll import poll


def api_up(plane: ControlPlane) -> bool:
    return plane.kubectl("get", "--raw", "/readyz", check=False, timeout=10).returncode == 0


def drain(plane: ControlPlane, node_name: str, socket: Path) -> None:
    """Delete the node's pods through the API (kubelet must run): kubelet stops them, and the
    CNI plugins tear their networks down (veths, addresses, per-pod rules). Waits up to 30 s
    for containerd's tasks to be gone."""
    plane.kubectl("cordon", node_name, check=False)
    plane.kubectl(
        "delete", "pods", "--all-namespaces", "--field-selector", f"spec.nodeName={node_name}",
        "--grace-period=2", "--wait=true", "--timeout=60s", check=False, timeout=90,
    )  # fmt: skip
    plane.kubectl("delete", "node", node_name, "--wait=false", check=False)
    poll(lambda: not sandboxes_running(socket), 30, interval=0.5)


def remove_host_files(layout: Layout, state: dict[str, Any]) -> None:
    """The container log links to our pods, kubelet's device plugin socket, libcni's cached
    results of our network and sandboxes, and the machine folders that were absent at `up`."""
    logs = Path("/var/log/containers")
    if logs.is_dir():
        for link in logs.iterdir():
            with contextlib.suppress(OSError):
                if link.is_symlink() and str(layout.pod_logs) in os.readlink(link):
                    link.unlink()
    if "/var/lib/kubelet" in state.get("absent_dirs", []):
        with contextlib.suppress(OSError):
            Path("/var/lib/kubelet/device-plugins/kubelet.sock").unlink()
    results = Path("/var/lib/cni/results")
    if results.is_dir():
        # libcni's result cache: our network's, and the loopback ones of our sandboxes.
        sandboxes = layout.containerd / "root" / "io.containerd.grpc.v1.cri" / "sandboxes"
        ids = [d.name for d in sandboxes.iterdir()] if sandboxes.is_dir() else []
        for f in results.iterdir():
            if f.name.startswith(f"{net.CNI_NETWORK}-") or any(i in f.name for i in ids):
                f.unlink()
    for d in state.get("absent_dirs", []):
        with contextlib.suppress(OSError):
            Path(d).rmdir()


def remove_workdir(layout: Layout, keep_logs: bool) -> None:
    """The node's folder, but for its logs when `keep_logs`."""
    for entry in layout.workdir.iterdir():
        if not (keep_logs and entry == layout.logs):
            if entry.is_dir() and not entry.is_symlink():
                shutil.rmtree(entry, ignore_errors=True)
            else:
                entry.unlink()
    if not keep_logs:
        layout.workdir.rmdir()
