"""`gke`: a regional GKE Standard cluster with its own node pool and Dataplane V2, so the
application's NetworkPolicies are enforced.

Hardened as Google's own guide has it: the nodes run as a service account of their own that may
write logs and metrics and read images, nothing else; pods get no node credentials (Workload
Identity, GKE metadata server); nodes are shielded and have private addresses only, reaching the
internet through Cloud NAT; the control plane's public endpoint admits the stack's
`cluster.authorizedNetworks` alone; upgrades follow a release channel within a maintenance window.
"""

from __future__ import annotations

import re
from datetime import datetime, timedelta
from typing import Final

import pulumi

from components.cluster.base import Cluster
from components.config import GkeCluster, MaintenanceWindow

# What a node needs and no more (GKE's "least privilege IAM service account" for nodes).
NODE_ROLES: Final = (
    "roles/logging.logWriter",
    "roles/monitoring.metricWriter",
    "roles/monitoring.viewer",
    "roles/stackdriver.resourceMetadata.writer",
    "roles/artifactregistry.reader",
)
# The access scopes those roles are used through: logs, metrics, and image pulls (Artifact
# Registry accepts the read-only storage scope). IAM is the boundary; the scopes keep a node's
# token from reaching any other API even if a role were added by hand.
NODE_SCOPES: Final = (
    "https://www.googleapis.com/auth/logging.write",
    "https://www.googleapis.com/auth/monitoring",
    "https://www.googleapis.com/auth/devstorage.read_only",
)
# A Monday: the first occurrence of a recurring maintenance window is anchored on it (any past
# date will do: GKE reads the time of day and the recurrence).
_WINDOW_ANCHOR: Final = datetime(2024, 1, 1)


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


def service_account_id(name: str, purpose: str) -> str:
    """A service account id for `purpose` (`nodes`, `backups`) of stack resource `name`: 6-30
    of [a-z0-9-], from a letter."""
    base = re.sub(r"[^a-z0-9-]", "-", name.lower())[: 29 - len(purpose)].strip("-")
    return f"{base}-{purpose}"


def node_account_id(name: str) -> str:
    """The nodes' service account id for cluster `name`."""
    return service_account_id(name, "nodes")


def maintenance_policy(window: MaintenanceWindow) -> dict[str, object]:
    """A recurring window: `window.hours` from `window.start` UTC on each of `window.days`."""
    hour, minute = (int(part) for part in window.start.split(":"))
    start = _WINDOW_ANCHOR.replace(hour=hour, minute=minute)
    end = start + timedelta(hours=window.hours)
    return {
        "recurring_window": {
            "start_time": start.strftime("%Y-%m-%dT%H:%M:%SZ"),
            "end_time": end.strftime("%Y-%m-%dT%H:%M:%SZ"),
            "recurrence": f"FREQ=WEEKLY;BYDAY={','.join(window.days)}",
        }
    }


class GkeStandardCluster(Cluster):
    # The cluster's Workload Identity pool, `<project>.svc.id.goog`, read from the cluster: GKE
    # makes the pool with a project's first such cluster, and IAM refuses a binding that names
    # it before then, so a binding made from this waits for the cluster.
    workload_pool: pulumi.Output[str]

    def __init__(
        self, name: str, config: GkeCluster, opts: pulumi.ResourceOptions | None = None
    ) -> None:
        super().__init__("mlstack:cluster:Gke", name, None, opts)
        import pulumi_gcp as gcp

        child = pulumi.ResourceOptions(parent=self)

        project, region = config.project, config.region
        node_account = gcp.serviceaccount.Account(
            f"{name}-nodes",
            project=project,
            account_id=node_account_id(name),
            display_name=f"{name} GKE nodes",
            opts=child,
        )
        grants = [
            gcp.projects.IAMMember(
                f"{name}-nodes-{role.removeprefix('roles/')}",
                project=project,
                role=role,
                member=node_account.email.apply(lambda email: f"serviceAccount:{email}"),
                opts=child,
            )
            for role in NODE_ROLES
        ]
        # Private nodes have no public address: Cloud NAT is their way out (images from public
        # registries, PostgreSQL's among them).
        router = gcp.compute.Router(
            f"{name}-egress", project=project, region=region, network="default", opts=child
        )
        nat = gcp.compute.RouterNat(
            f"{name}-egress",
            project=project,
            region=region,
            router=router.name,
            nat_ip_allocate_option="AUTO_ONLY",
            source_subnetwork_ip_ranges_to_nat="ALL_SUBNETWORKS_ALL_IP_RANGES",
            log_config={"enable": True, "filter": "ERRORS_ONLY"},
            opts=child,
        )
        networks = config.authorized_networks
        cluster = gcp.container.Cluster(
            name,
            project=project,
            location=region,
            # The default pool cannot be managed well; the stack's own pool replaces it.
            remove_default_node_pool=True,
            initial_node_count=1,
            min_master_version=config.kubernetes_version,
            release_channel={"channel": config.release_channel},
            maintenance_policy=maintenance_policy(config.maintenance_window),
            datapath_provider="ADVANCED_DATAPATH",
            networking_mode="VPC_NATIVE",
            workload_identity_config={"workload_pool": f"{project}.svc.id.goog"},
            # No authorized network: the public endpoint is off, the API is reached from the
            # network (a bastion, a VPN, a self-hosted runner) through the private one.
            private_cluster_config={
                "enable_private_nodes": True,
                "enable_private_endpoint": not networks,
            },
            master_authorized_networks_config={
                "cidr_blocks": [
                    {"cidr_block": cidr, "display_name": f"authorized-{index}"}
                    for index, cidr in enumerate(networks)
                ],
                "gcp_public_cidrs_access_enabled": False,
            },
            enable_shielded_nodes=True,
            deletion_protection=bool(opts and opts.protect),
            opts=child,
        )
        nodes = gcp.container.NodePool(
            f"{name}-nodes",
            project=project,
            cluster=cluster.name,
            location=region,
            node_count=config.node_count,
            # No `version`: the nodes are made at the control plane's and auto-upgrade after it.
            # A version of their own would fight the upgrades: each `pulumi up` after one would
            # take the nodes back to it.
            management={"auto_repair": True, "auto_upgrade": True},
            node_config={
                "machine_type": config.machine_type,
                "service_account": node_account.email,
                "oauth_scopes": list(NODE_SCOPES),
                "shielded_instance_config": {
                    "enable_secure_boot": True,
                    "enable_integrity_monitoring": True,
                },
                "workload_metadata_config": {"mode": "GKE_METADATA"},
            },
            # The nodes start logging and pulling at once: their grants and their way out first.
            opts=pulumi.ResourceOptions(parent=self, depends_on=[*grants, nat]),
        )
        self.workload_pool = cluster.workload_identity_config.apply(
            lambda found: str(found.workload_pool) if found else ""
        )
        kubeconfig = pulumi.Output.all(
            cluster.name, cluster.endpoint, cluster.master_auth.cluster_ca_certificate
        ).apply(lambda parts: gke_kubeconfig(str(parts[0]), str(parts[1]), str(parts[2])))
        # The application waits for the nodes, and is deleted before them.
        self._finish(kubeconfig, depends_on=[nodes])
