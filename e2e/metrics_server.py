"""metrics-server for the real node: the Metrics API (`v1beta1.metrics.k8s.io`) that the e2e
stack's HorizontalPodAutoscalers read, as clusters serve it, so that `kubectl get hpa -w` and the
autoscaling scenario see real CPU use.

It runs as a process on the machine, like kube-proxy and kube-router, from the binary
e2e/toolchain/build.sh builds (`sigs.k8s.io/metrics-server` METRICS_SERVER_VERSION):
- it listens on the node address (an Endpoints address may not be a loopback one), with a serving
  certificate signed by kwokctl's CA for `metrics-server.kube-system.svc`, the name the API
  server's aggregator checks; the APIService carries that CA;
- it reads the kubelet's `/metrics/resource` at the node's InternalIP with the cluster's admin
  client certificate, and verifies the kubelet's serving certificate against kwokctl's CA (the
  node signs one for its address: no `--kubelet-insecure-tls`);
- the APIService points at a Service without a selector in kube-system whose Endpoints name the
  process; the API server (`--enable-aggregator-routing`, e2e/controlplane.py) dials that
  endpoint, since it runs outside the node's Service routing.
"""

from __future__ import annotations

import base64
import json
import subprocess
from collections.abc import Callable
from pathlib import Path
from typing import Final

from components.labels import PART_OF_LABEL
from e2e import addresses as net
from e2e.controlplane import PART_OF

NAME: Final = "metrics-server"
NAMESPACE: Final = "kube-system"
PORT: Final = 10251
API_SERVICE: Final = "v1beta1.metrics.k8s.io"
SERVICE_DNS: Final = f"{NAME}.{NAMESPACE}.svc"
# Seconds between scrapes of the kubelet (metrics-server's minimum is 10 s; the HPA controller
# reads every 15 s).
RESOLUTION_SECONDS: Final = 10


def argv(binary: str, pki: Path, ca_dir: Path) -> list[str]:
    """The command line of the metrics-server process (certificates: e2e/node/certificates.py)."""
    kubeconfig = str(pki / "admin.kubeconfig")
    return [
        binary,
        f"--bind-address={net.NODE_ADDRESS}",
        f"--secure-port={PORT}",
        f"--tls-cert-file={pki / 'metrics-server.crt'}",
        f"--tls-private-key-file={pki / 'metrics-server.key'}",
        f"--kubeconfig={kubeconfig}",
        f"--authentication-kubeconfig={kubeconfig}",
        f"--authorization-kubeconfig={kubeconfig}",
        f"--kubelet-certificate-authority={ca_dir / 'ca.crt'}",
        "--kubelet-preferred-address-types=InternalIP",
        "--kubelet-use-node-status-port",
        f"--metric-resolution={RESOLUTION_SECONDS}s",
        # metrics-server refuses a scrape timeout not below the resolution (its default is 10 s).
        f"--kubelet-request-timeout={RESOLUTION_SECONDS // 2}s",
        "--v=1",
    ]


def registration(ca_dir: Path) -> str:
    """The Service, its Endpoints and the APIService that put the process behind the API
    server's aggregation layer, as one `kubectl apply` document."""
    ca_bundle = base64.b64encode((ca_dir / "ca.crt").read_bytes()).decode()
    labels = {"app.kubernetes.io/name": NAME, PART_OF_LABEL: PART_OF}
    meta = {"name": NAME, "namespace": NAMESPACE, "labels": labels}
    items = [
        {
            "apiVersion": "v1",
            "kind": "Service",
            "metadata": meta,
            # No selector: the endpoint is a process on the machine, not a pod.
            "spec": {"ports": [{"name": "https", "port": 443, "targetPort": PORT}]},
        },
        {
            "apiVersion": "v1",
            "kind": "Endpoints",
            "metadata": meta,
            "subsets": [
                {
                    "addresses": [{"ip": net.NODE_ADDRESS}],
                    "ports": [{"name": "https", "port": PORT}],
                }
            ],
        },
        {
            "apiVersion": "apiregistration.k8s.io/v1",
            "kind": "APIService",
            "metadata": {"name": API_SERVICE, "labels": labels},
            "spec": {
                "group": "metrics.k8s.io",
                "version": "v1beta1",
                "service": {"name": NAME, "namespace": NAMESPACE, "port": 443},
                "caBundle": ca_bundle,
                "groupPriorityMinimum": 100,
                "versionPriority": 100,
            },
        },
    ]
    return json.dumps({"apiVersion": "v1", "kind": "List", "items": items})


def node_metrics_served(kubectl: Callable[..., subprocess.CompletedProcess[str]]) -> bool:
    """Whether the Metrics API answers through the API server with the node's usage."""
    proc = kubectl(
        "get", "--raw", "/apis/metrics.k8s.io/v1beta1/nodes", check=False, timeout=10
    )  # fmt: skip
    if proc.returncode != 0:
        return False
    try:
        return bool(json.loads(proc.stdout).get("items"))
    except ValueError:
        return False
