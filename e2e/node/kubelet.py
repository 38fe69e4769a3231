"""kubelet: cgroupfs under its own cgroup root, cgroup v1 allowed, swap allowed, no host DNS
servers in pods, webhook authentication and authorization, the client certificate for
`system:node:<name>` (e2e/node/certificates.py); it does not set the kernel tunables it would
otherwise change (they are restored anyway: see e2e/node/host.py `SYSCTLS`).

Its identity is also bound to the `system:node` ClusterRole (READS_BINDING). The API server's
Node authorizer lets a kubelet read a pod's Secrets, ConfigMaps and claims only once its graph
holds the pod's binding to the node; a kubelet that asks first, as this one often does on two
cores, is refused, and then retries the pod only after its 10-15 s sync back-off, so that a pod
sometimes started that much later (a new database 16-19 s after its creation instead of 5-9 s).
RBAC, asked when the Node authorizer has no opinion, allows those reads instead."""

from __future__ import annotations

import contextlib
import json
from pathlib import Path
from typing import Final

from components.labels import PART_OF_LABEL
from e2e import addresses as net
from e2e import process
from e2e.controlplane import PART_OF, ControlPlane
from e2e.node.layout import Layout
from e2e.node.state import NodeState
from e2e.render import render_json

NAME: Final = "kubelet"
CGROUP_ROOT: Final = "mlstack-e2e"
PORT: Final = 10250
READS_BINDING: Final = "mlstack-e2e-node-reads"
RBAC: Final = "rbac.authorization.k8s.io"


def reads_binding(node_name: str) -> dict[str, object]:
    """The ClusterRoleBinding of `system:node` to this node's kubelet."""
    role = {"apiGroup": RBAC, "kind": "ClusterRole", "name": "system:node"}
    kubelet = {"apiGroup": RBAC, "kind": "User", "name": f"system:node:{node_name}"}
    part_of = {PART_OF_LABEL: PART_OF}
    return {
        "apiVersion": f"{RBAC}/v1",
        "kind": "ClusterRoleBinding",
        "metadata": {"name": READS_BINDING, "labels": part_of},
        "roleRef": role,
        "subjects": [kubelet],
    }


def cgroup_hierarchies() -> list[Path]:
    return [mount.point for mount in process.mounts() if mount.fstype in ("cgroup", "cgroup2")]


def make_cgroups() -> None:
    """kubelet's cgroup root, in every hierarchy (cpuset needs its cpus and mems set)."""
    for hierarchy in cgroup_hierarchies():
        group = hierarchy / CGROUP_ROOT
        group.mkdir(exist_ok=True)
        for key in ("cpuset.cpus", "cpuset.mems"):
            if (group / key).exists() and not (group / key).read_text().strip():
                (group / key).write_text((hierarchy / key).read_text())


def cgroups_left() -> list[Path]:
    return [h / CGROUP_ROOT for h in cgroup_hierarchies() if (h / CGROUP_ROOT).exists()]


def remove_cgroups() -> None:
    for hierarchy in cgroup_hierarchies():
        root = hierarchy / CGROUP_ROOT
        if not root.exists():
            continue
        groups = sorted(
            (p for p in root.rglob("*") if p.is_dir()), key=lambda p: len(p.parts), reverse=True
        )
        for group in [*groups, root]:
            with contextlib.suppress(OSError):
                group.rmdir()


def write_config(layout: Layout, ca: Path) -> Path:
    """kubelet's config file (JSON, as YAML takes it); returns its path."""
    pki = layout.pki
    path = layout.workdir / "kubelet.yaml"
    path.write_text(
        render_json(
            "kubelet.json",
            address=net.NODE_ADDRESS,
            port=PORT,
            client_ca_file=str(ca / "ca.crt"),
            tls_cert_file=str(pki / "kubelet-serving.crt"),
            tls_private_key_file=str(pki / "kubelet-serving.key"),
            container_runtime_endpoint=f"unix://{layout.containerd_socket}",
            cgroup_root=f"/{CGROUP_ROOT}",
            cluster_dns=net.DNS_SERVICE_IP,
            cluster_domain=net.CLUSTER_DOMAIN,
            pod_logs_dir=str(layout.pod_logs),
            volume_plugin_dir=str(layout.volume_plugins),
        )
    )
    return path


def start(layout: Layout, state: NodeState, plane: ControlPlane, node_name: str) -> None:
    """Start kubelet and wait for the node to be Ready."""
    root = layout.kubelet_root
    for d in (root, layout.pod_logs, layout.volume_plugins, layout.volumes):
        d.mkdir(parents=True, exist_ok=True)
    path = write_config(layout, plane.pki_dir)
    plane.kubectl("apply", "-f", "-", stdin=json.dumps(reads_binding(node_name)))
    state.spawn(
        NAME,
        [
            str(plane.bin_dir / "kubelet"),
            f"--config={path}",
            f"--kubeconfig={layout.kubeconfig('kubelet')}",
            f"--root-dir={root}",
            f"--cert-dir={root / 'pki'}",
            f"--hostname-override={node_name}",
            f"--node-ip={net.NODE_ADDRESS}",
            "--v=1",
        ],
    )
    state.wait("the node to be Ready", lambda: node_ready(plane, node_name), 120, NAME)


def node_ready(plane: ControlPlane, node_name: str) -> bool:
    proc = plane.kubectl(
        "get", "node", node_name, "-o",
        'jsonpath={.status.conditions[?(@.type=="Ready")].status}',
        check=False,
    )  # fmt: skip
    return proc.stdout.strip() == "True"
