"""A real local cluster with the app deployed, left running: what `make e2e-cluster` brings up.

The same pieces as the e2e suite: the app's images built and served by digest from a registry on
127.0.0.1 (e2e/images.py), the throwaway control plane without fake nodes (e2e/controlplane.py),
the real node with its egress guard and NetworkPolicy enforcement (e2e/node.py), the database
claims bound to local volumes on it, and the stack deployed by the real `pulumi up`
(e2e/workspace.py). Root only; nothing leaves the machine.

    python -m e2e.cluster up DIR     # ends with three `export` lines: KUBECONFIG, gateway URL, key
    python -m e2e.cluster down DIR   # stop everything and remove every rule, mount and process
"""

from __future__ import annotations

import json
import secrets
import shutil
import sys
from collections.abc import Sequence
from dataclasses import asdict
from pathlib import Path
from typing import Any, Final

from components import database, microservice
from e2e.controlplane import ControlPlane, toolchain_bin
from e2e.images import ImageRefs, Images
from e2e.node import Node
from e2e.workspace import PulumiWorkspace

STACK: Final = "e2e"
NAMESPACE: Final = "mlstack-e2e"
CLAIM: Final = database.claim_name(0)
# Every claim the stack's database instances can have: a local volume waits for each.
CLAIMS: Final = tuple(database.claim_name(i) for i in range(database.MAX_REPLICAS))
GATEWAY_SERVICE: Final = "gateway"


def stack_config(plane: ControlPlane, refs: ImageRefs) -> dict[str, Any]:
    """The stack's config: the existing (throwaway) cluster, the images built here by digest."""
    return {
        "mlstack:cluster": {
            "provider": "existing",
            "kubeconfig": str(plane.kubeconfig),
            "context": plane.context,
        },
        "mlstack:images": {
            "build": False,
            "gateway": refs.gateway,
            "model": refs.model,
            "database": refs.database,
        },
        "mlstack:gateway": {"replicas": 2, "serviceType": "LoadBalancer"},
        "mlstack:model": {"replicas": 2},
        "mlstack:database": {"replicas": 1, "storageSize": "1Gi"},
    }


def unfinished_rollouts(plane: ControlPlane) -> list[str]:
    """The stack's workloads whose rollout has not ended, each with its status: what
    `kubectl rollout status` waits for (the controller has observed the latest generation, every
    pod is updated and available, no older pod is left; for a StatefulSet, the update revision
    is the current one)."""
    found: Any = plane.get_json("deployments,statefulsets", "-n", NAMESPACE)
    unfinished = []
    for item in found["items"]:
        wanted = item["spec"]["replicas"]
        status = item.get("status") or {}
        counts = [
            status.get(key, 0) for key in ("updatedReplicas", "replicas", "availableReplicas")
        ]
        ended = (
            status.get("observedGeneration", 0) >= item["metadata"]["generation"]
            and counts == [wanted] * 3
            and (
                item["kind"] != "StatefulSet"
                or status.get("currentRevision") == status.get("updateRevision")
            )
        )
        if not ended:
            unfinished.append(f"{item['kind']}/{item['metadata']['name']}: {json.dumps(status)}")
    return unfinished


def gateway_url(plane: ControlPlane) -> str:
    """`http://<LoadBalancer address>:80`, read from the gateway Service's status."""
    ip = plane.kubectl(
        "get", "service", GATEWAY_SERVICE, "-n", NAMESPACE,
        "-o", "jsonpath={.status.loadBalancer.ingress[0].ip}",
    ).stdout.strip()  # fmt: skip
    if not ip:
        raise RuntimeError(f"{NAMESPACE}/{GATEWAY_SERVICE} has no LoadBalancer address")
    return f"http://{ip}:{microservice.SERVICE_PORT}"


class LocalCluster:
    """Everything under one folder: `images/`, `cluster/` (with `node/`), `pulumi/`."""

    def __init__(self, workdir: Path) -> None:
        self.workdir = workdir
        self.images = Images(workdir / "images")

    def plane(self) -> ControlPlane:
        return ControlPlane(bin_dir=toolchain_bin(), workdir=self.workdir / "cluster", fake_nodes=0)

    def up(self) -> list[str]:
        """Bring everything up and deploy the stack; returns the three `export` lines. On any
        failure everything is removed again."""
        self.workdir.mkdir(parents=True, exist_ok=True)
        try:
            refs = self.images.up()
            self.images.engine.stop()  # only the registry serves from now on
            plane = self.plane()
            plane.start()
            node = Node(plane, registries=[self.images.registry.address])
            node.up()
            for claim in CLAIMS:
                node.add_volume(NAMESPACE, claim)
            api_key = secrets.token_urlsafe(24)
            ws = PulumiWorkspace(
                bin_dir=plane.bin_dir, root=self.workdir / "pulumi", kubeconfig=plane.kubeconfig
            )
            ws.create()
            ws.run("login", f"file://{ws.backend_dir}")
            ws.init_stack(
                STACK,
                stack_config(plane, refs),
                {
                    # With what a URL or a password file gives a meaning to, as the
                    # base64 passwords the README's commands make may have.
                    "mlstack:databasePassword": secrets.token_urlsafe(24) + "/@:%+=?",
                    "mlstack:databaseReplicationPassword": secrets.token_urlsafe(24) + "/@:%+=?",
                    "mlstack:apiKey": api_key,
                    "mlstack:secretsDigestKey": secrets.token_urlsafe(24),
                },
            )
            ws.run("up", "--stack", STACK, "--yes", "--skip-preview")
            url = gateway_url(plane)
        except BaseException:
            print("e2e cluster: start failed, removing what was made", file=sys.stderr)
            self.down()
            raise
        (self.workdir / "images.json").write_text(json.dumps(asdict(refs), indent=2) + "\n")
        return [
            f"export KUBECONFIG={plane.kubeconfig}",
            f"export MLSTACK_GATEWAY_URL={url}",
            f"export MLSTACK_API_KEY={api_key}",
        ]

    def down(self) -> list[str]:
        """Stop and remove everything `up` made (node, control plane, engine and registry);
        returns what could not be removed."""
        plane = self.plane()
        left = Node(plane).down()
        plane.stop()
        self.images.down()
        if not left:
            for name in ("pulumi", "cluster", "images", "images.json"):
                path = self.workdir / name
                if path.is_dir():
                    shutil.rmtree(path, ignore_errors=True)
                elif path.exists():
                    path.unlink()
        return left


def main(argv: Sequence[str]) -> int:
    if len(argv) != 2 or argv[0] not in ("up", "down"):
        print(__doc__, file=sys.stderr)
        return 2
    cluster = LocalCluster(Path(argv[1]).resolve())
    if argv[0] == "up":
        lines = cluster.up()
        print("\n".join(lines), flush=True)
        return 0
    left = cluster.down()
    if left:
        print("e2e cluster: left behind:\n" + "\n".join(left), file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
