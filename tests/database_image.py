"""The database image's scripts (services/database/bin) run outside the image, as the unit and
service tests run them: its entrypoint by this Python (the image's interpreter, /opt/patroni, is
not here), the variables components/database.py gives its `backups` container, and the stack's
Secret in a folder as the kubelet writes it (and writes it again when the Secret changes)."""

from __future__ import annotations

import os
import runpy
import shlex
import shutil
import sys
import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Final, cast

from components import database, pod
from components.image import SERVICES_DIR
from tests.stand_ins import stand_in

BIN: Final = SERVICES_DIR / "database" / "bin"
TEMPLATE: Final = SERVICES_DIR / "database" / "patroni.yml"
ROLES_SQL: Final = SERVICES_DIR / "database" / "roles.sql"


def entrypoint_module() -> dict[str, Any]:
    """The image's entrypoint (`mlstack-database`) loaded as a module, not run: its names."""
    return runpy.run_path(str(BIN / "mlstack-database"), run_name="entry")


def entrypoint_stand_in(folder: Path) -> Path:
    """`mlstack-database` in `folder`: the image's own, run by this Python. The other scripts
    call it by name: put `folder` first on their PATH."""
    command = shlex.join([sys.executable, str(BIN / "mlstack-database")])
    return stand_in(folder, "mlstack-database", f'#!/bin/sh\nexec {command} "$@"\n')


def roles_stand_in(folder: Path) -> Path:
    """`mlstack-database-roles` in `folder`: the image's own, by name, as the entrypoint's
    password watch runs it (put `folder` first on its PATH)."""
    command = shlex.join(["bash", str(BIN / "mlstack-database-roles")])
    return stand_in(folder, "mlstack-database-roles", f'#!/bin/sh\nexec {command} "$@"\n')


def write_secret_volume(folder: Path, values: Mapping[str, str]) -> None:
    """`values` in `folder` as the kubelet writes a Secret's volume, and writes it again when the
    Secret changes: each key a symbolic link through `..data` to a folder of the current
    version's files; a new version written beside it, `..data` switched to it in one rename, and
    the version before removed. Whoever reads a key's path after the switch reads the new
    value."""
    folder.mkdir(parents=True, exist_ok=True)
    version = Path(tempfile.mkdtemp(prefix="..version_", dir=folder))
    for key, value in values.items():
        (version / key).write_text(value)
    data = folder / "..data"
    before = os.readlink(data) if data.is_symlink() else None
    switch = folder / "..data_tmp"
    switch.symlink_to(version.name)
    switch.replace(data)
    for key in values:
        if not (folder / key).is_symlink():
            (folder / key).symlink_to(Path("..data") / key)
    if before is not None:
        shutil.rmtree(folder / before)


def rendered_containers(
    backup: database.BackupArgs | None = None,
) -> dict[str, dict[str, Any]]:
    """The database pod's containers by name, as components/database.py renders them (with
    `backup`'s container when it is given)."""
    args = database.DatabaseArgs(
        stack="test",
        namespace="test",
        storage_size="1Gi",
        storage_class=None,
        image="database:test",
        secret_name="database",
        backup=backup,
    )
    spec = cast(dict[str, Any], database._pod_spec(args, {"app.kubernetes.io/name": "database"}))
    return {container["name"]: container for container in spec["containers"]}


# Rendered once, as this module is imported: the spec's Pulumi outputs need the main thread's
# event loop, which asyncio.run() (the PostgreSQL helpers of the tests) leaves unset after it.
_CONTAINERS: Final = rendered_containers(
    database.BackupArgs(options={"repo1-type": "s3"}, secret_keys={})
)


def backups_own_env() -> dict[str, str]:
    """The variables the program gives the `backups` container and not `postgres` (its schedule
    and its metrics' port), with the values it gives by default."""
    containers = _CONTAINERS
    postgres = {v["name"] for v in containers[database.POSTGRES_CONTAINER]["env"]}
    return {
        v["name"]: str(v["value"])
        for v in containers[database.BACKUPS_CONTAINER]["env"]
        if v["name"] not in postgres
    }


def password_files(folder: Path) -> dict[str, str]:
    """The `postgres` container's variables naming the Secret's files, the Secret's folder moved
    to `folder`."""
    return {
        v["name"]: str(folder / v["value"].removeprefix(f"{pod.SECRETS_DIR}/"))
        for v in _CONTAINERS[database.POSTGRES_CONTAINER]["env"]
        if str(v.get("value", "")).startswith(f"{pod.SECRETS_DIR}/")
    }


def pod_variables(pod_name: str, ip: str, storage_bytes: int) -> dict[str, str]:
    """What the entrypoint reads of the pod it runs in: the name, address and namespace the
    downward API gives, DATABASE_LABELS as components/database.py renders it, and a data volume
    of `storage_bytes`."""
    rendered = {
        v["name"]: str(v["value"])
        for v in _CONTAINERS[database.POSTGRES_CONTAINER]["env"]
        if "value" in v
    }
    return {
        "POD_NAME": pod_name,
        "POD_IP": ip,
        "POD_NAMESPACE": "mlstack-dev",
        "DATABASE_LABELS": rendered["DATABASE_LABELS"],
        "DATABASE_STORAGE_BYTES": str(storage_bytes),
    }
