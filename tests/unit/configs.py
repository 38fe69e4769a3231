"""Stack config values the unit tests put in place of a stack file's own, the builders of a
stack's config with them, and the program run on a config that must fail: the one line it logs."""

from __future__ import annotations

from typing import Any, Final

import pytest

from components.config import USER_TOLD_EXIT_CODE
from components.stack_file import stacks
from harness.program import ProgramExitError, run_program, stack_config

# `mlstack:cluster` for a cluster the program does not make: a kind cluster's kubeconfig context.
EXISTING: Final[dict[str, Any]] = {"provider": "existing", "context": "kind-mlstack"}
# `mlstack:images` for services built elsewhere: the references the program deploys as given.
PREBUILT_IMAGES: Final[dict[str, Any]] = {
    "build": False,
    "gateway": "g:1",
    "model": "m:1",
    "database": "d:1",
}

# `mlstack:database.backup.s3`: an S3-compatible endpoint, which no stack file has; and a CA bundle.
S3: Final = {"endpoint": "https://s3.example.com:9000", "bucket": "mlstack-backups", "region": "r1"}
CA: Final = "-----BEGIN CERTIFICATE-----\nMIIBbackupca\n-----END CERTIFICATE-----\n"
# prod's backups: the bucket S3 and its CA.
PROD_BACKUP: Final = {"s3": {**S3, "caCertificate": CA}}
# The bucket's keys, which a stack backing up to an S3-compatible endpoint needs beside
# harness.program TEST_SECRETS (which holds the encryption key every stack has).
BACKUP_TEST_SECRETS: Final = {
    "mlstack:databaseBackupS3AccessKey": "test-backup-s3-access-key",
    "mlstack:databaseBackupS3SecretKey": "test-backup-s3-secret-key",
}


def cloud_stacks(provider: str) -> list[str]:
    """The stack files whose cluster is on the cloud `provider` (`gke`, `eks`)."""
    return [s for s in stacks() if stack_config(s)["mlstack:cluster"]["provider"] == provider]


def dev_with(**overrides: Any) -> dict[str, Any]:
    """The dev stack's config with some `mlstack:` keys replaced (None removes one)."""
    config = stack_config("dev")
    for key, value in overrides.items():
        full = f"mlstack:{key}"
        if value is None:
            config.pop(full, None)
        else:
            config[full] = value
    return config


def with_fields(config: dict[str, Any], key: str, /, **fields: Any) -> dict[str, Any]:
    """`config` with `fields` set in its object `mlstack:<key>`, that object's other fields kept."""
    full = f"mlstack:{key}"
    return {**config, full: {**config[full], **fields}}


def existing_with(**overrides: Any) -> dict[str, Any]:
    """dev_with on an existing cluster (EXISTING) with prebuilt images (PREBUILT_IMAGES), unless
    `overrides` replace them too."""
    return dev_with(**{"cluster": EXISTING, "images": dict(PREBUILT_IMAGES), **overrides})


def config_exit(config: dict[str, Any], **kwargs: Any) -> ProgramExitError:
    with pytest.raises(ProgramExitError) as raised:
        run_program("dev", config, **kwargs)
    return raised.value


def config_error(config: dict[str, Any], **kwargs: Any) -> str:
    """The one line a config mistake logs; the program then exits, telling the CLI so."""
    exited = config_exit(config, **kwargs)
    assert exited.code == USER_TOLD_EXIT_CODE
    assert len(exited.errors) == 1, "a config mistake is reported once"
    (message,) = exited.errors
    assert "\n" not in message, "a config mistake is reported on one line"
    return message


def with_backup(stack: str, backup: Any = None, *, existing: bool = False) -> dict[str, Any]:
    """`stack`'s config with `database.backup` (default: the bucket S3) and its secrets; on an
    existing cluster with `existing` (an endpoint is for local and existing clusters alone)."""
    config = stack_config(stack)
    if existing:
        config["mlstack:cluster"] = EXISTING
    backup = {"s3": S3} if backup is None else backup
    return {**with_fields(config, "database", backup=backup), **BACKUP_TEST_SECRETS}
