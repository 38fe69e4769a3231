"""`gke`: a regional GKE Standard cluster with its own node pool and Dataplane V2, so the
application's NetworkPolicies are enforced."""

from __future__ import annotations

import pulumi

from components.cluster.base import Cluster
from components.config import GkeCluster


def gke_kubeconfig(name: str, endpoint: str, ca_certificate: str) -> str:
    """A kubeconfig that authenticates with gke-gcloud-auth-plugin: no long-lived credential."""
    return f"""apiVersion: v1
kind: Config
clusters:
- name: {name}
  cluster:
    server: https://{endpoint}
    certificate-authority-data: {ca_certificate}
contexts:
- name: {name}
  context:
    cluster: {name}
    user: {name}
current-context: {name}
users:
- name: {name}
  user:
    exec:
      apiVersion: client.authentication.k8s.io/v1beta1
      command: gke-gcloud-auth-plugin
      provideClusterInfo: true
      installHint: Install gke-gcloud-auth-plugin (gcloud components install gke-gcloud-auth-plugin)
"""


class GkeStandardCluster(Cluster):
    def __init__(
        self, name: str, config: GkeCluster, opts: pulumi.ResourceOptions | None = None
    ) -> None:
        super().__init__("mlstack:cluster:Gke", name, None, opts)
        import pulumi_gcp as gcp

        cluster = gcp.container.Cluster(
            name,
            project=config.project,
            location=config.region,
            # The default pool cannot be managed well; the stack's own pool replaces it.
            remove_default_node_pool=True,
            initial_node_count=1,
            min_master_version=config.kubernetes_version,
            release_channel={"channel": "REGULAR"},
            datapath_provider="ADVANCED_DATAPATH",
            workload_identity_config=(
                {"workload_pool": f"{config.project}.svc.id.goog"} if config.project else None
            ),
            deletion_protection=bool(opts and opts.protect),
            opts=pulumi.ResourceOptions(parent=self),
        )
        nodes = gcp.container.NodePool(
            f"{name}-nodes",
            project=config.project,
            cluster=cluster.name,
            location=config.region,
            node_count=config.node_count,
            version=config.kubernetes_version,
            management={"auto_repair": True, "auto_upgrade": True},
            node_config={
                "machine_type": config.machine_type,
                "oauth_scopes": ["https://www.googleapis.com/auth/cloud-platform"],
                "shielded_instance_config": {
                    "enable_secure_boot": True,
                    "enable_integrity_monitoring": True,
                },
                "workload_metadata_config": {"mode": "GKE_METADATA"} if config.project else None,
            },
            opts=pulumi.ResourceOptions(parent=self),
        )
        kubeconfig = pulumi.Output.all(
            cluster.name, cluster.endpoint, cluster.master_auth.cluster_ca_certificate
        ).apply(lambda parts: gke_kubeconfig(str(parts[0]), str(parts[1]), str(parts[2])))
        # The application waits for the nodes, and is deleted before them.
        self._finish(kubeconfig, depends_on=[nodes])
