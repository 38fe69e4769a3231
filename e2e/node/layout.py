"""Where the node keeps its files: every one of them under one folder."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from e2e.workdir import InWorkdir


@dataclass(frozen=True)
class Layout:
    """The node's folder (`<control plane's folder>/node`) and what each part keeps in it."""

    workdir: Path

    state_file = InWorkdir("state.json")
    logs = InWorkdir("logs")
    pki = InWorkdir("pki")
    containerd = InWorkdir("containerd")
    containerd_socket = InWorkdir("containerd", "containerd.sock")
    cni = InWorkdir("cni")
    images = InWorkdir("images")
    kubelet_root = InWorkdir("kubelet")
    pod_logs = InWorkdir("pod-logs")
    volume_plugins = InWorkdir("volume-plugins")
    volumes = InWorkdir("volumes")
    s3 = InWorkdir("s3")

    def kubeconfig(self, user: str) -> Path:
        """The kubeconfig of one of the node's identities (e2e/node/certificates.py)."""
        return self.pki / f"{user}.kubeconfig"
