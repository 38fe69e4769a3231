"""Where the node keeps its files: every one of them under one folder."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class Layout:
    """The node's folder (`<control plane's folder>/node`) and what each part keeps in it."""

    workdir: Path

    @property
    def state_file(self) -> Path:
        return self.workdir / "state.json"

    @property
    def logs(self) -> Path:
        return self.workdir / "logs"

    @property
    def pki(self) -> Path:
        return self.workdir / "pki"

    @property
    def containerd(self) -> Path:
        return self.workdir / "containerd"

    @property
    def containerd_socket(self) -> Path:
        return self.containerd / "containerd.sock"

    @property
    def cni(self) -> Path:
        return self.workdir / "cni"

    @property
    def images(self) -> Path:
        return self.workdir / "images"

    @property
    def kubelet_root(self) -> Path:
        return self.workdir / "kubelet"

    @property
    def pod_logs(self) -> Path:
        return self.workdir / "pod-logs"

    @property
    def volume_plugins(self) -> Path:
        return self.workdir / "volume-plugins"

    @property
    def volumes(self) -> Path:
        return self.workdir / "volumes"

    @property
    def s3(self) -> Path:
        return self.workdir / "s3"

    def kubeconfig(self, user: str) -> Path:
        """The kubeconfig of one of the node's identities (e2e/node/certificates.py)."""
        return self.pki / f"{user}.kubeconfig"
