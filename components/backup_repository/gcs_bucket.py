"""gke: a GCS bucket the program creates for the stack's backups, in the cluster's region, and
the identity the database pods reach it with: a Google service account that may manage the
bucket's objects and nothing else, which the Kubernetes ServiceAccount `database` acts as through
Workload Identity (the cluster's `<project>.svc.id.goog` pool). No key exists anywhere.

pgBackRest's `gcs` repository with `repo1-gcs-key-type=auto` asks the metadata server for a
token; on a Workload Identity node pool that is the GKE metadata server, which answers with the
service account's token for the pod's ServiceAccount.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Final

import pulumi
import pulumi_gcp as gcp

from components import database
from components.backup_repository.common import (
    RECOVERY_DAYS,
    BucketArgs,
    Repository,
    bucket_name,
    cloud_bucket_repository,
)
from components.cluster.gke import GkeStandardCluster, service_account_id
from components.config import BackupConfig, GkeCluster, StackConfig
from components.network_policy import ExternalRoute

# Read, write, list and delete the bucket's objects: what pgBackRest does, and no bucket setting.
OBJECT_ROLE: Final = "roles/storage.objectAdmin"
WORKLOAD_IDENTITY_ROLE: Final = "roles/iam.workloadIdentityUser"
# The annotation GKE's metadata server reads to know which service account a pod acts as.
ACCOUNT_ANNOTATION: Final = "iam.gke.io/gcp-service-account"
# Where a pod reaches the GKE metadata server on a Dataplane V2 cluster (the only kind
# components/cluster/gke.py makes): the link-local address, plain HTTP. (On the older dataplane
# a policy would name 169.254.169.252:988 instead.)
METADATA_SERVER: Final = "169.254.169.254/32"
METADATA_PORT: Final = 80
# The NetworkPolicy name of the database pods' way out to the metadata server, for their token.
METADATA_ROUTE_NAME: Final = "database-to-metadata-server"


def workload_identity_member(pool: str, namespace: str, account: str) -> str:
    """The IAM member a Kubernetes ServiceAccount is in the cluster's workload pool."""
    return f"serviceAccount:{pool}[{namespace}/{account}]"


@dataclass(frozen=True)
class GcsBucketArgs(BucketArgs):
    """The ServiceAccount (BucketArgs) acts as the bucket's service account."""

    project: str
    region: str
    account_id: str
    # The cluster's Workload Identity pool (GkeStandardCluster): the binding waits for it.
    workload_pool: pulumi.Input[str]


class GcsBackupBucket(pulumi.ComponentResource):
    bucket: gcp.storage.Bucket
    account: gcp.serviceaccount.Account

    def __init__(
        self, name: str, args: GcsBucketArgs, opts: pulumi.ResourceOptions | None = None
    ) -> None:
        super().__init__("mlstack:backup:GcsBucket", name, None, opts)
        self.bucket = gcp.storage.Bucket(
            name,
            project=args.project,
            # Beside the cluster: no cross-region traffic, and the region's own outage aside,
            # the backups survive the cluster.
            location=args.region,
            uniform_bucket_level_access=True,
            public_access_prevention="enforced",
            # Deleted objects (a backup set expired, or a repository removed by mistake) can be
            # restored for RECOVERY_DAYS. Versioning would keep every overwritten copy of
            # pgBackRest's info files instead, until a lifecycle rule removed them.
            soft_delete_policy={"retention_duration_seconds": RECOVERY_DAYS * 24 * 3600},
            # A bucket that holds backups is never emptied by `pulumi destroy`.
            force_destroy=False,
            opts=pulumi.ResourceOptions(parent=self, protect=args.protect),
        )
        self.account = gcp.serviceaccount.Account(
            name,
            project=args.project,
            account_id=args.account_id,
            display_name=f"{name}: the database's backups",
            opts=pulumi.ResourceOptions(parent=self),
        )
        member = self.account.email.apply(lambda email: f"serviceAccount:{email}")
        gcp.storage.BucketIAMMember(
            name,
            bucket=self.bucket.name,
            role=OBJECT_ROLE,
            member=member,
            opts=pulumi.ResourceOptions(parent=self),
        )
        gcp.serviceaccount.IAMMember(
            f"{name}-workload-identity",
            service_account_id=self.account.name,
            role=WORKLOAD_IDENTITY_ROLE,
            member=pulumi.Output.from_input(args.workload_pool).apply(
                lambda pool: workload_identity_member(pool, args.namespace, args.service_account)
            ),
            opts=pulumi.ResourceOptions(parent=self),
        )
        self.register_outputs({"bucket": self.bucket.name, "account": self.account.email})


def gcs_bucket_repository(
    config: StackConfig,
    backup: BackupConfig,
    cluster: GkeStandardCluster,
    parent: pulumi.Resource,
) -> Repository:
    assert isinstance(config.cluster, GkeCluster), config.cluster
    bucket = GcsBackupBucket(
        bucket_name(config),
        GcsBucketArgs(
            project=config.cluster.project,
            region=config.cluster.region,
            account_id=service_account_id(config.qualified_name, "backups"),
            workload_pool=cluster.workload_pool,
            namespace=config.namespace,
            service_account=database.NAME,
            protect=config.protect,
        ),
        pulumi.ResourceOptions(parent=parent),
    )
    return cloud_bucket_repository(
        config,
        backup,
        "gcs",
        {"repo1-gcs-bucket": bucket.bucket.name, "repo1-gcs-key-type": "auto"},
        bucket=bucket,
        service_account_annotations={ACCOUNT_ANNOTATION: bucket.account.email},
        egress=(
            # The token: Workload Identity's GKE metadata server, on the link-local address
            # alone (nothing else listens there for a pod). The nodes leave through Cloud NAT.
            ExternalRoute(
                source=database.NAME,
                port=METADATA_PORT,
                name=METADATA_ROUTE_NAME,
                cidrs=(METADATA_SERVER,),
            ),
        ),
    )
