"""local, existing: a repository on a volume of the stack's (`database.backup.volume`, or
`backup: {}`), mounted in every database pod: pgBackRest's `posix` repository.

Every instance archives to, and restores from, the same claim, so every instance must run on the
node it is attached to: right on a cluster of one node (`local` always is), wrong on a cluster of
several, where an instance on another node never starts (README, "Backups and restore"). Nothing
leaves the node: no route out is opened.
"""

from __future__ import annotations

from components import database
from components.backup_repository.common import Repository, repository
from components.config import BackupConfig, StackConfig, VolumeRepository


def volume_repository(
    config: StackConfig, backup: BackupConfig, volume: VolumeRepository
) -> Repository:
    return repository(
        config,
        backup,
        {"repo1-type": "posix", "repo1-path": database.BACKUP_VOLUME_DIR},
        volume=database.BackupVolume(size=volume.size, storage_class=volume.storage_class),
    )
