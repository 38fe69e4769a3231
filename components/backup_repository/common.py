"""What every backup repository gives the database, and the options they all share."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Final

import pulumi

from components import database
from components.config import (
    BACKUP_CIPHER_SECRET,
    BACKUP_S3_ACCESS_KEY,
    BACKUP_S3_SECRET_KEY,
    BackupConfig,
    StackConfig,
)
from components.network_policy import ExternalRoute

# The database Secret's key of each of pgBackRest's secret options, and the stack secret that
# fills it.
CIPHER_OPTION: Final = "repo1-cipher-pass"
SECRET_KEYS: Final = {
    CIPHER_OPTION: ("backup-cipher-password", BACKUP_CIPHER_SECRET),
    "repo1-s3-key": ("backup-s3-access-key", BACKUP_S3_ACCESS_KEY),
    "repo1-s3-key-secret": ("backup-s3-secret-key", BACKUP_S3_SECRET_KEY),
}
# How long a deleted or overwritten object of a bucket the program made can still be brought
# back (GCS soft delete, S3 noncurrent versions): a repository emptied by mistake, or by whoever
# holds the database pods' identity, is noticed (mlstack_database_backup_repository_up, the
# backup's age) and put back within it.
RECOVERY_DAYS: Final = 14
# The NetworkPolicy name of the database pods' way out to their repository.
ROUTE_NAME: Final = "database-to-backup-repository"
# Where the cloud object stores (GCS, S3) answer.
HTTPS_PORT: Final = 443


@dataclass(frozen=True, kw_only=True)
class BucketArgs:
    """What every bucket the program creates takes: the Kubernetes ServiceAccount that acts with
    its cloud identity (the database pods'), and whether `pulumi destroy` must leave it."""

    namespace: str
    service_account: str
    protect: bool = False


@dataclass(frozen=True)
class Repository:
    """What the database needs of its backup repository."""

    args: database.BackupArgs
    # The database Secret's entries its secret options are read from, by key.
    secrets: Mapping[str, pulumi.Input[str]]
    # The database pods' ways out to it (none for a volume).
    egress: tuple[ExternalRoute, ...] = ()
    # The cloud resources (bucket, identity) the pods need before their first archive.
    resources: tuple[pulumi.Resource, ...] = ()


def bucket_name(config: StackConfig) -> str:
    """The Pulumi name of the component that makes the stack's backup bucket in a cloud (the
    bucket's own name, its identity's, start with it)."""
    return f"{config.qualified_name}-backups"


def repository_route(port: int) -> ExternalRoute:
    """The database pods' way out to their repository: TCP `port` on any address (a repository
    is known by its DNS name)."""
    return ExternalRoute(source=database.NAME, port=port, name=ROUTE_NAME)


def object_store_path(config: StackConfig) -> str:
    """The stack's folder in a bucket: stacks may share one endpoint's bucket, those of two
    copies of mlstack too (two stacks in one folder would be one pgBackRest repository)."""
    return f"/{config.project}/{config.stack}"


def shared_options(backup: BackupConfig) -> dict[str, str]:
    """Every repository is encrypted by pgBackRest before anything leaves the pod (the
    cipher's key is the stack secret BACKUP_CIPHER_SECRET), and keeps `retentionFull` full
    backups with the WAL they need."""
    return {
        "repo1-cipher-type": "aes-256-cbc",
        "repo1-retention-full": str(backup.retention_full),
    }


def repository(
    config: StackConfig,
    backup: BackupConfig,
    options: Mapping[str, pulumi.Input[str]],
    *,
    secret_options: tuple[str, ...] = (),
    ca_certificate: str | None = None,
    volume: database.BackupVolume | None = None,
    service_account_annotations: Mapping[str, pulumi.Input[str]] | None = None,
    egress: tuple[ExternalRoute, ...] = (),
    resources: tuple[pulumi.Resource, ...] = (),
) -> Repository:
    """A repository of `options` (plus the shared ones), whose secret options are the cipher's
    key and `secret_options`, read from the database Secret."""
    secret_keys = {option: SECRET_KEYS[option][0] for option in (CIPHER_OPTION, *secret_options)}
    return Repository(
        args=database.BackupArgs(
            options={**options, **shared_options(backup)},
            secret_keys=secret_keys,
            ca_certificate=ca_certificate,
            volume=volume,
            service_account_annotations=dict(service_account_annotations or {}),
            full_every_hours=backup.full_every_hours,
            diff_every_hours=backup.diff_every_hours,
        ),
        secrets={
            key: config.backup_secrets[SECRET_KEYS[option][1]]
            for option, key in secret_keys.items()
        },
        egress=egress,
        resources=resources,
    )


def cloud_bucket_repository(
    config: StackConfig,
    backup: BackupConfig,
    kind: str,
    options: Mapping[str, pulumi.Input[str]],
    *,
    bucket: pulumi.Resource,
    service_account_annotations: Mapping[str, pulumi.Input[str]],
    egress: tuple[ExternalRoute, ...] = (),
) -> Repository:
    """pgBackRest's `kind` repository in `bucket`, which the program made in the cluster's own
    cloud, reached with the database pods' cloud identity (`service_account_annotations`): the
    stack's folder in it, and `egress` beside the way out to the object store. That way is HTTPS
    to any address: GCS and S3 answer on addresses from their provider's whole front-end
    ranges, which change without notice and are far wider than one service, and a
    NetworkPolicy cannot name a provider's prefix list."""
    return repository(
        config,
        backup,
        {"repo1-type": kind, "repo1-path": object_store_path(config), **options},
        service_account_annotations=service_account_annotations,
        egress=(repository_route(HTTPS_PORT), *egress),
        resources=(bucket,),
    )
