"""The database image's scripts (services/database/bin) run outside the image, as the unit and
service tests run them: its entrypoint by this Python (the image's interpreter, /opt/patroni, is
not here), the variables components/database.py gives its `backups` container, the stack's
Secret in a folder as the kubelet writes it (and writes it again when the Secret changes), and
the scripts pointed at a test's PostgreSQL (Image)."""

from __future__ import annotations

import os
import runpy
import shlex
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Final, cast

import yaml

from components import database, pod
from components.image import SERVICES_DIR
from harness.ports import free_port
from harness.postgres import PostgresServer, postgres_bindir
from harness.processes import LocalServer
from tests.stand_ins import stand_in

BIN: Final = SERVICES_DIR / "database" / "bin"
TEMPLATE: Final = SERVICES_DIR / "database" / "patroni.yml"
ROLES_SQL: Final = SERVICES_DIR / "database" / "roles.sql"


def entrypoint_module() -> dict[str, Any]:
    """The image's entrypoint (`mlstack-database`) loaded as a module, not run: its names."""
    return runpy.run_path(str(BIN / "mlstack-database"), run_name="entry")


def script_stand_in(folder: Path, name: str) -> Path:
    """The image's script `name` in `folder`, run by this Python (the image's interpreter is not
    here): its own, for the scripts that call it by name with `folder` first on their PATH."""
    command = shlex.join([sys.executable, str(BIN / name)])
    return stand_in(folder, name, f'#!/bin/sh\nexec {command} "$@"\n')


def entrypoint_stand_in(folder: Path) -> Path:
    """`mlstack-database` in `folder`: the image's own (script_stand_in). The other scripts
    call it by name: put `folder` first on their PATH. `mlstack-database-repository`, which
    the backups container calls, beside it."""
    script_stand_in(folder, "mlstack-database-repository")
    return script_stand_in(folder, "mlstack-database")


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


def backups_container(
    image: Image, log: Path, *, bin_first: Path | None = None
) -> tuple[LocalServer, int]:
    """The image's `backups` container beside `image`'s server, with the program's settings and a
    round every 0.2 s, not started; and the port of its metrics. `bin_first`: a folder of
    programs found before the image's (a real pgBackRest)."""
    port = free_port()
    path = (
        image.env["PATH"]
        if bin_first is None
        else os.pathsep.join((str(bin_first), image.env["PATH"]))
    )
    server = LocalServer(
        "mlstack-database-backups",
        [sys.executable, str(BIN / "mlstack-database-backups")],
        log,
        f"http://127.0.0.1:{port}",
        ready_path="/metrics",
        env={
            **image.env,
            **backups_own_env(),
            "PATH": path,
            "METRICS_PORT": str(port),
            "DATABASE_BACKUP_CHECK_SECONDS": "0.2",
        },
    )
    return server, port


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


# The database Secret's files: every character SQL, psql or a connection string gives a meaning.
PASSWORDS: Final = {
    database.OWNER_PASSWORD_KEY: "Ow/n@e:r%2F+x=y?z'q\"#\\1 :x",
    database.GATEWAY_PASSWORD_KEY: "Ga/t@e:w%40+a=y?'s\"#\\2 :'y'",
    database.REPLICATION_PASSWORD_KEY: "Re/p@l:i%3F+c=a?'t\"#\\3",
    database.REWIND_PASSWORD_KEY: "Re/w@i:n%26+d=e?'r\"#\\4",
}


class Image:
    """The image's scripts pointed at the server on `socket_dir` and `port`."""

    def __init__(self, root: Path, socket_dir: Path, port: int) -> None:
        folder = root / "database"
        folder.mkdir(parents=True)
        settings = yaml.safe_load(TEMPLATE.read_text())
        settings["postgresql"]["listen"] = f"127.0.0.1:{port}"
        settings["postgresql"]["parameters"]["unix_socket_directories"] = str(socket_dir)
        # The entrypoint's start looks at the data folder: one of the test's, never the machine's.
        settings["postgresql"]["data_dir"] = str(root / "pgdata")
        self.template = folder / "patroni.yml"
        self.template.write_text(yaml.safe_dump(settings))
        shutil.copy(ROLES_SQL, folder / "roles.sql")
        # The Secret's volume, as the kubelet writes it (and again when the Secret changes).
        self.secrets = root / "secrets"
        write_secret_volume(self.secrets, PASSWORDS)
        stand_ins = root / "bin"
        entrypoint_stand_in(stand_ins)
        roles_stand_in(stand_ins)
        self.stand_ins = stand_ins
        # The container's own /tmp: the roles script's lock file, the repository script's
        # scratch folders; not the machine's.
        temporary = root / "tmp"
        temporary.mkdir()
        self.env = {
            **os.environ,
            "PATH": os.pathsep.join((str(stand_ins), str(postgres_bindir()), os.environ["PATH"])),
            "TMPDIR": str(temporary),
            "PATRONI_CONFIG_TEMPLATE": str(self.template),
            **password_files(self.secrets),
        }

    def settings(self) -> dict[str, Any]:
        found: dict[str, Any] = yaml.safe_load(self.template.read_text())
        return found

    def entrypoint(self, *arguments: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [str(self.stand_ins / "mlstack-database"), *arguments],
            env=self.env, capture_output=True, text=True, timeout=30, check=False,
        )  # fmt: skip

    def sql(self, *commands: str) -> list[str]:
        """The rows of `commands`, run as the superuser through the socket (the only way in once
        the image's pg_hba is the server's), each `|`-separated."""
        done = self.entrypoint(
            "--psql", "--tuples-only", "--no-align", *(f"--command={c}" for c in commands)
        )
        assert done.returncode == 0, done.stderr
        return done.stdout.splitlines()

    def roles(self, *arguments: str) -> subprocess.CompletedProcess[str]:
        """The roles script, as Patroni runs it."""
        done = subprocess.run(
            ["bash", str(BIN / "mlstack-database-roles"), *arguments],
            env=self.env, capture_output=True, text=True, timeout=90, check=False,
        )  # fmt: skip
        for value in PASSWORDS.values():
            assert value not in done.stdout + done.stderr
        return done


def image_for(root: Path, server: PostgresServer) -> Image:
    return Image(root, server.socket_dir, server.port)
