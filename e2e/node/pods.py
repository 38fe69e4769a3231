"""The suite's own pods on the node (the probe, CoreDNS) under the `restricted` Pod Security
level, and the namespaces that enforce it."""

from __future__ import annotations

from typing import Any, Final

from e2e.node.local_images import PROBE_IMAGE

# The pod and container settings the `restricted` Pod Security level asks of the suite's own
# pods (the probe and CoreDNS, whose images run as 65532).
RESTRICTED_POD: Final = {
    "runAsNonRoot": True,
    "runAsUser": 65532,
    "runAsGroup": 65532,
    "seccompProfile": {"type": "RuntimeDefault"},
}
RESTRICTED_CONTAINER: Final = {
    "allowPrivilegeEscalation": False,
    "readOnlyRootFilesystem": True,
    "capabilities": {"drop": ["ALL"]},
}


def restricted_namespace(name: str) -> dict[str, Any]:
    """A Namespace whose pods Pod Security admission holds to `restricted`."""
    return {
        "apiVersion": "v1",
        "kind": "Namespace",
        "metadata": {
            "name": name,
            "labels": {"pod-security.kubernetes.io/enforce": "restricted"},
        },
    }


def probe_pod(
    node_name: str, name: str, namespace: str, labels: dict[str, str] | None = None
) -> dict[str, Any]:
    """A pod of the probe image on node `node_name` under the `restricted` Pod Security level:
    non-root, read-only root, no capabilities, RuntimeDefault seccomp; an HTTP server on 8080
    with a readiness probe."""
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": name, "namespace": namespace, "labels": labels or {"app": name}},
        "spec": {
            "nodeSelector": {"kubernetes.io/hostname": node_name},
            "automountServiceAccountToken": False,
            "enableServiceLinks": False,
            "terminationGracePeriodSeconds": 2,
            "securityContext": RESTRICTED_POD,
            "containers": [
                {
                    "name": "probe",
                    "image": PROBE_IMAGE,
                    "imagePullPolicy": "Never",
                    "args": ["serve", ":8080"],
                    "ports": [{"name": "http", "containerPort": 8080}],
                    "readinessProbe": {
                        "httpGet": {"path": "/", "port": 8080},
                        "periodSeconds": 1,
                    },
                    "resources": {
                        "requests": {"cpu": "10m", "memory": "16Mi"},
                        "limits": {"memory": "64Mi"},
                    },
                    "securityContext": RESTRICTED_CONTAINER,
                }
            ],
        },
    }
