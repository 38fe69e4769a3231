"""local, existing: an S3-compatible endpoint the stack names (`database.backup.s3`), reached
with the bucket's keys (the stack secrets databaseBackupS3AccessKey/SecretKey)."""

from __future__ import annotations

from components.backup_repository.common import (
    Repository,
    object_store_path,
    repository,
    repository_route,
)
from components.config import BackupConfig, S3Repository, StackConfig


def s3_endpoint_repository(
    config: StackConfig, backup: BackupConfig, s3: S3Repository
) -> Repository:
    return repository(
        config,
        backup,
        {
            "repo1-type": "s3",
            "repo1-path": object_store_path(config),
            "repo1-s3-endpoint": s3.host,
            "repo1-storage-port": str(s3.port),
            "repo1-s3-bucket": s3.bucket,
            "repo1-s3-region": s3.region,
            "repo1-s3-uri-style": s3.uri_style,
        },
        secret_options=("repo1-s3-key", "repo1-s3-key-secret"),
        ca_certificate=s3.ca_certificate,
        # The endpoint is a DNS name the stack gives: its addresses are not the program's to
        # know, so its port is open on any.
        egress=(repository_route(s3.port),),
    )
