"""A throwaway PostgreSQL cluster on 127.0.0.1 (initdb, pg_ctl from the machine's own server
packages), its standbys, and one-off queries: what the service tests and the benchmarks run the
gateway's PostgreSQL store against."""

from __future__ import annotations

import asyncio
import contextlib
import os
import pwd
import shutil
import signal
import subprocess
import tempfile
from collections.abc import Awaitable, Callable, Iterator
from glob import glob
from pathlib import Path
from typing import Any, TypeVar

import asyncpg

from harness.poll import log_tail, wait_until
from harness.ports import free_port
from harness.processes import children, exists

T = TypeVar("T")


def postgres_bindir() -> Path:
    """Where Debian's PostgreSQL server binaries are (initdb, pg_ctl, postgres)."""
    candidates: list[Path] = []
    pg_config = shutil.which("pg_config")
    if pg_config:
        out = subprocess.run([pg_config, "--bindir"], capture_output=True, text=True, check=False)
        if out.returncode == 0:
            candidates.append(Path(out.stdout.strip()))
    versions = sorted(glob("/usr/lib/postgresql/*/bin"), key=lambda p: int(p.split("/")[-2]))
    candidates.extend(Path(p) for p in reversed(versions))
    for candidate in candidates:
        if (candidate / "initdb").is_file() and (candidate / "pg_ctl").is_file():
            return candidate
    raise RuntimeError(
        "PostgreSQL server binaries (initdb, pg_ctl) not found in `pg_config --bindir` or "
        "/usr/lib/postgresql/*/bin: install them with `apt-get install -y postgresql`"
    )


class PostgresServer:
    """A throw-away PostgreSQL cluster on 127.0.0.1, run as an unprivileged user under root."""

    def __init__(self) -> None:
        self.bindir = postgres_bindir()
        self.port = free_port()
        self.base = Path(tempfile.mkdtemp(prefix="mlstack-pg-"))
        self.data = self.base / "data"
        self.socket_dir = self.base / "socket"
        self.log = self.base / "postgres.log"
        self.socket_dir.mkdir()
        self._runas: list[str] = []
        if os.geteuid() == 0:
            # initdb and postgres refuse to run as root.
            user = _unprivileged_user()
            entry = pwd.getpwnam(user)
            for path in (self.base, self.socket_dir):
                os.chown(path, entry.pw_uid, entry.pw_gid)
            self._runas = ["runuser", "-u", user, "--"]

    @property
    def pid(self) -> int:
        """The running postmaster's process id, from the first line of its postmaster.pid."""
        return int((self.data / "postmaster.pid").read_text().splitlines()[0])

    def dsn(self, database: str = "postgres") -> str:
        return f"postgresql://postgres@127.0.0.1:{self.port}/{database}"

    def _run(self, *args: str) -> None:
        result = subprocess.run(
            [*self._runas, *args], capture_output=True, text=True, check=False, timeout=120
        )
        if result.returncode != 0:
            raise RuntimeError(
                f"{' '.join(args)} failed:\n{result.stdout}{result.stderr}"
                f"{self.log}:\n{log_tail(self.log)}"
            )

    def init(self) -> PostgresServer:
        self._run(
            str(self.bindir / "initdb"),
            "-D", str(self.data),
            "-U", "postgres",
            "--auth=trust",
            "--encoding=UTF8",
            "--no-sync",
        )  # fmt: skip
        return self

    def start(self) -> None:
        options = f"-h 127.0.0.1 -p {self.port} -k {self.socket_dir}"
        self._run(
            str(self.bindir / "pg_ctl"),
            "-D", str(self.data),
            "-l", str(self.log),
            "-o", options,
            "-w", "-t", "60",
            "start",
        )  # fmt: skip

    def stop(self, mode: str = "fast") -> None:
        self._run(str(self.bindir / "pg_ctl"), "-D", str(self.data), "-m", mode, "-w", "stop")

    def promote(self) -> None:
        """A standby made a primary, as Patroni promotes one: a new timeline begins."""
        self._run(str(self.bindir / "pg_ctl"), "-D", str(self.data), "-w", "promote")

    def kill(self, timeout: float = 30.0) -> None:
        """SIGKILL the postmaster and every backend at once, as when the node loses the pod.
        (The postmaster alone would leave its backends to notice its death each in its own
        time, and one may still answer a query after another connection was refused.) Returns
        once they are all gone, so that start() (crash recovery from WAL, same port and data
        directory) does not find the shared memory still in use."""
        pid = self.pid
        # PostgreSQL makes each child of the postmaster a session of its own: each is killed by
        # its pid. The postmaster is stopped first, so that it forks none while they are listed.
        os.kill(pid, signal.SIGSTOP)
        family = [pid, *children(pid)]
        for each in family:
            with contextlib.suppress(ProcessLookupError):
                os.kill(each, signal.SIGKILL)
        wait_until(
            lambda: not any(exists(each) for each in family),
            "the PostgreSQL backends to exit after SIGKILL",
            timeout,
            self.log,
            interval=0.05,
        )

    def reload(self) -> None:
        """Make the server read its configuration files again (postgresql.auto.conf included)."""
        self._run(str(self.bindir / "pg_ctl"), "-D", str(self.data), "reload")

    @contextlib.contextmanager
    def replay_paused(self, database: str = "postgres") -> Iterator[None]:
        """This standby with its WAL replay paused (it still receives WAL), resumed on the way
        out: what it serves stays as it was while the primary moves on."""
        dsn = self.dsn(database)
        query(dsn, "SELECT pg_wal_replay_pause()")
        try:
            wait_until(
                lambda: query(dsn, "SELECT pg_get_wal_replay_pause_state()")[0][0] == "paused",
                "the standby's replay to pause",
                30,
                self.log,
                interval=0.05,
            )
            yield
        finally:
            query(dsn, "SELECT pg_wal_replay_resume()")

    def next_wal_segment(self) -> None:
        """A row written (in a table `filler` of the `postgres` database, made if need be), then
        a switch to the next WAL segment: the one written is complete, its whole 16 MB kept or
        archived."""
        dsn = self.dsn()
        query(dsn, "CREATE TABLE IF NOT EXISTS filler (n int)")
        query(dsn, "INSERT INTO filler VALUES (1)")
        query(dsn, "SELECT pg_switch_wal()")

    def standby(self, slot: str | None = None) -> PostgresServer:
        """A hot standby of this running server, started: a base backup of it that streams its
        WAL from it over 127.0.0.1 (initdb's defaults allow it: wal_level replica, 10 WAL
        senders, trusted replication connections from 127.0.0.1), through this server's
        replication slot `slot` when one is named (it must exist)."""
        standby = PostgresServer()
        # -R: standby.signal and primary_conninfo (and primary_slot_name with -S), so the copy
        # starts as this server's standby.
        standby._run(
            str(self.bindir / "pg_basebackup"),
            "-D", str(standby.data),
            "-h", "127.0.0.1",
            "-p", str(self.port),
            "-U", "postgres",
            "-R",
            *(("-S", slot) if slot else ()),
            "--checkpoint=fast",
            "--no-sync",
        )  # fmt: skip
        standby.start()
        return standby

    def create_database(self, name: str) -> str:
        on_connection(self.dsn(), lambda conn: conn.execute(f'CREATE DATABASE "{name}"'))
        return self.dsn(name)

    def create_password_role(self, role: str, password: str) -> None:
        """A login role that connects over TCP with `password` only (the rest of the server
        trusts 127.0.0.1), and a database it owns named after it."""

        async def create(conn: asyncpg.Connection) -> None:
            # A utility statement takes no parameters: format() quotes them server-side.
            quote = "SELECT format('CREATE ROLE %I LOGIN PASSWORD %L', $1::text, $2::text)"
            await conn.execute(await conn.fetchval(quote, role, password))
            quote = "SELECT format('CREATE DATABASE %I OWNER %I', $1::text, $1::text)"
            await conn.execute(await conn.fetchval(quote, role))

        on_connection(self.dsn(), create)
        self.require_password(role)

    def require_password(self, *roles: str) -> None:
        """Make `roles` connect over TCP with their password only (the rest of the server trusts
        127.0.0.1), to any database, as the stack's pg_hba.conf makes every TCP client."""
        hba = self.data / "pg_hba.conf"
        # pg_hba.conf is read top down: these lines come before initdb's trust lines.
        lines = "".join(f"host all {role} 127.0.0.1/32 scram-sha-256\n" for role in roles)
        hba.write_text(lines + hba.read_text())
        self.reload()

    def destroy(self) -> None:
        with contextlib.suppress(RuntimeError):
            self.stop("immediate")
        shutil.rmtree(self.base, ignore_errors=True)


@contextlib.contextmanager
def running_postgres() -> Iterator[PostgresServer]:
    """A throwaway PostgreSQL, initialized and started, destroyed on the way out (an initdb or a
    start that fails included)."""
    server = PostgresServer()
    try:
        server.init().start()
        yield server
    finally:
        server.destroy()


def _unprivileged_user() -> str:
    for name in ("postgres", "nobody"):
        try:
            pwd.getpwnam(name)
        except KeyError:
            continue
        return name
    raise RuntimeError("no unprivileged user (postgres or nobody) to run PostgreSQL as")


def on_connection(dsn: str, work: Callable[[asyncpg.Connection], Awaitable[T]]) -> T:
    """What `work` returns, run on a connection of its own to `dsn`, closed after it."""

    async def run() -> T:
        conn = await asyncpg.connect(dsn)
        try:
            return await work(conn)
        finally:
            await conn.close()

    return asyncio.run(run())


def query(dsn: str, sql: str, *args: Any) -> list[asyncpg.Record]:
    rows: list[asyncpg.Record] = on_connection(dsn, lambda conn: conn.fetch(sql, *args))
    return rows
