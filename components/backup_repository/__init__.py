"""The database's backup repository, per cluster kind (README, "Backups and restore"):

    gke                a GCS bucket the program creates, reached through Workload Identity
    eks                an S3 bucket the program creates (SSE-KMS), reached through IAM roles for
                       service accounts
    local, existing    the S3-compatible endpoint `database.backup.s3` names (with the bucket's
                       keys as stack secrets), or a volume of the stack's

Each kind's module turns the stack's config into what the database needs: pgBackRest's options,
the stack secrets its secret options are read from, the ServiceAccount's cloud identity, the
volume, the NetworkPolicy routes out to the repository, and the cloud resources its pods wait for.
The cloud SDKs are imported only by the kind that uses them.
"""

from __future__ import annotations

import pulumi

from components.backup_repository.common import Repository
from components.cluster import Cluster
from components.config import CloudBucket, GkeCluster, S3Repository, StackConfig, VolumeRepository

__all__ = ["Repository", "backup_repository"]


def backup_repository(
    config: StackConfig, cluster: Cluster, parent: pulumi.Resource
) -> Repository | None:
    """The stack's repository, or None without `database.backup`. Cloud resources are made as
    children of `parent`."""
    backup = config.database.backup
    if backup is None:
        return None
    repository = backup.repository
    if isinstance(repository, S3Repository | VolumeRepository):
        from components.backup_repository.named import named_repository

        return named_repository(config, backup, repository)
    assert isinstance(repository, CloudBucket), repository
    if isinstance(config.cluster, GkeCluster):
        from components.backup_repository.gcs_bucket import gcs_bucket_repository
        from components.cluster.gke import GkeStandardCluster

        assert isinstance(cluster, GkeStandardCluster), cluster
        return gcs_bucket_repository(config, backup, cluster, parent)
    from components.backup_repository.s3_bucket import s3_bucket_repository
    from components.cluster.eks import EksManagedCluster

    assert isinstance(cluster, EksManagedCluster), cluster
    return s3_bucket_repository(config, backup, cluster, parent)
