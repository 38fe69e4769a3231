"""local, existing: the repository the stack names, reached without any cloud identity.

- `database.backup.s3`: an S3-compatible endpoint, reached with the bucket's keys (the stack
  secrets databaseBackupS3AccessKey/SecretKey). The endpoint is a DNS name the stack gives: its
  addresses are not the program's to know, so its port is open on any.
- `database.backup.volume` (or `backup: {}`): a volume of the stack's, mounted in every database
  pod (pgBackRest's `posix` repository). Every instance archives to, and restores from, the same
  claim, so every instance must run on the node it is attached to: right on a cluster of one node
  (`local` always is), wrong on a cluster of several, where an instance on another node never
  starts (README, "Backups and restore"). Nothing leaves the node: no route out is opened.
"""

from __future__ import annotations

from components import database
from components.backup_repository.common import (
    Repository,
    object_store_path,
    repository,
    repository_route,
)
from components.config import BackupConfig, S3Repository, StackConfig, VolumeRepository


def named_repository(
    config: StackConfig, backup: BackupConfig, named: S3Repository | VolumeRepository
) -> Repository:
    if isinstance(named, VolumeRepository):
        return repository(
            config,
            backup,
            {"repo1-type": "posix", "repo1-path": database.BACKUP_VOLUME_DIR},
            volume=database.BackupVolume(size=named.size, storage_class=named.storage_class),
        )
    return repository(
        config,
        backup,
        {
            "repo1-type": "s3",
            "repo1-path": object_store_path(config),
            "repo1-s3-endpoint": named.host,
            "repo1-storage-port": str(named.port),
            "repo1-s3-bucket": named.bucket,
            "repo1-s3-region": named.region,
            "repo1-s3-uri-style": named.uri_style,
        },
        secret_options=("repo1-s3-key", "repo1-s3-key-secret"),
        ca_certificate=named.ca_certificate,
        egress=(repository_route(named.port),),
    )
