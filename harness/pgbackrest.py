"""A throwaway pgBackRest repository (a `posix` one in a folder, encrypted as every stack's is)
for a throwaway PostgreSQL of harness.postgres: its WAL archive and base backups, read and
restored by pgBackRest itself, as the database image's scripts do in a pod. pgBackRest comes
from the machine's packages (`apt-get install pgbackrest`)."""

from __future__ import annotations

import json
import os
import pwd
import shutil
import subprocess
from pathlib import Path
from typing import Any, Final

from harness.postgres import PostgresServer, query

STANZA: Final = "mlstack"
# The key pgBackRest encrypts the repository with (the stacks' is a stack secret).
CIPHER_PASS: Final = "harness-cipher-password"


def pgbackrest_program() -> Path:
    """pgBackRest on PATH, or how to install it."""
    found = shutil.which("pgbackrest")
    if found is None:
        raise RuntimeError(
            "pgBackRest not found on PATH: install it with `apt-get install -y pgbackrest`"
        )
    return Path(found)


class Repository:
    """A repository for `server`'s stanza, in a folder of the server's own (removed with it).
    `bin` holds a `pgbackrest` that runs the real one with this repository's configuration:
    first on a script's PATH, it is the `pgbackrest` the image's scripts call, and the server's
    archive and restore commands run it (pgBackRest writes it into the restore_command of what
    it restores, as `cmd`). With `path`, the repository there (another's) instead."""

    def __init__(
        self, server: PostgresServer, *, retention_full: int = 9, path: Path | None = None
    ) -> None:
        self.server = server
        self.folder = folder = server.base / "pgbackrest"
        self.bin = folder / "bin"
        self.bin.mkdir(parents=True)
        self.config = folder / "pgbackrest.conf"
        self.command = self.bin / "pgbackrest"
        owner = server.base.stat()
        user = pwd.getpwuid(owner.st_uid).pw_name
        # Whoever runs it (root's tests, the server's commands), it runs as the server's user,
        # who owns the repository, as one user does in a pod.
        self.command.write_text(
            "#!/bin/sh\n"
            f'[ "$(id -u)" != 0 ] || [ {owner.st_uid} = 0 ] || '
            f'exec runuser -u {user} -- "$0" "$@"\n'
            f"PGBACKREST_CONFIG={self.config} PGBACKREST_STANZA={STANZA} "
            f'exec {pgbackrest_program()} "$@"\n'
        )
        self.command.chmod(0o755)
        settings = {
            "repo1-type": "posix",
            # Another server's repository's, when `path` names it.
            "repo1-path": path or folder / "repository",
            "repo1-cipher-type": "aes-256-cbc",
            "repo1-cipher-pass": CIPHER_PASS,
            "repo1-retention-full": retention_full,
            "cmd": self.command,
            "lock-path": folder / "lock",
            "spool-path": folder / "spool",
            "log-path": folder / "log",
            "log-level-file": "off",
            "log-level-console": "warn",
            "start-fast": "y",
        }
        cluster = {
            "pg1-path": server.data,
            "pg1-socket-path": server.socket_dir,
            "pg1-port": server.port,
        }
        self.config.write_text(
            "".join(
                f"[{section}]\n" + "".join(f"{key}={value}\n" for key, value in options.items())
                for section, options in (("global", settings), (STANZA, cluster))
            )
        )
        for made in (folder, *folder.rglob("*")):
            os.chown(made, owner.st_uid, owner.st_gid)

    def run(self, *args: str, timeout: float = 300) -> subprocess.CompletedProcess[str]:
        """pgBackRest with `args`, as the server's user (the repository's owner)."""
        return subprocess.run(
            [str(self.command), *args],
            capture_output=True, text=True, timeout=timeout, check=False,
        )  # fmt: skip

    def __call__(self, *args: str, timeout: float = 300) -> str:
        """pgBackRest with `args`; its output, or RuntimeError with its error."""
        done = self.run(*args, timeout=timeout)
        if done.returncode != 0:
            raise RuntimeError(f"pgbackrest {' '.join(args)} failed: {done.stderr or done.stdout}")
        return done.stdout

    def stanza(self) -> dict[str, Any]:
        """The stanza as `pgbackrest info --output=json` tells it: its databases, archive and
        backups."""
        found: dict[str, Any] = json.loads(self("info", "--output=json"))[0]
        return found

    def archive_server(self, *, stanza: bool = True) -> None:
        """The server archives every WAL segment here (restarted for archive_mode), and the
        stanza is made unless `stanza` is False."""
        for name, value in (
            ("archive_mode", "on"),
            ("archive_command", f"{self.command} archive-push %p"),
        ):
            query(self.server.dsn(), f"ALTER SYSTEM SET {name} = '{value}'")
        self.server.stop()
        self.server.start()
        if stanza:
            self("stanza-create")
