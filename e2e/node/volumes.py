"""Local PersistentVolumes on the node, pre-bound to a claim: what a provisioner would create."""

from __future__ import annotations

import json
from pathlib import Path

from e2e.controlplane import ControlPlane


def add_volume(
    plane: ControlPlane, volumes: Path, node_name: str, *, namespace: str, claim: str, size: str
) -> Path:
    """A local PersistentVolume under `volumes` on node `node_name`, pre-bound to
    `namespace/claim`; returns its folder."""
    path = volumes / f"{namespace}-{claim}"
    path.mkdir(parents=True, exist_ok=True)
    # The pod's user is not known here (fsGroup is applied to local volumes by kubelet).
    path.chmod(0o777)
    pv = {
        "apiVersion": "v1",
        "kind": "PersistentVolume",
        "metadata": {"name": f"{namespace}-{claim}", "labels": {"mlstack-e2e/node": "true"}},
        "spec": {
            "capacity": {"storage": size},
            "accessModes": ["ReadWriteOnce"],
            "persistentVolumeReclaimPolicy": "Retain",
            "storageClassName": "",
            "volumeMode": "Filesystem",
            "local": {"path": str(path)},
            "claimRef": {"namespace": namespace, "name": claim},
            "nodeAffinity": {
                "required": {
                    "nodeSelectorTerms": [
                        {
                            "matchExpressions": [
                                {
                                    "key": "kubernetes.io/hostname",
                                    "operator": "In",
                                    "values": [node_name],
                                }
                            ]
                        }
                    ]
                }
            },
        },
    }
    plane.kubectl("apply", "-f", "-", stdin=json.dumps(pv))
    return path
