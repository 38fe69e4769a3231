"""The WAL a primary keeps for a standby that stopped streaming is bounded by its volume: with
the parameters the image's entrypoint gives an instance (the cluster's from patroni.yml under
the pod's own, as Patroni merges them), applied by a reload as Patroni applies them, a real
PostgreSQL keeps the WAL behind a stopped standby's replication slot up to the limit, and past
it gives the slot up at the next checkpoint instead of filling its disk. The standby, back,
then finds the WAL it needs gone (without a WAL archive: README, "High availability").

On the least volume the program deploys, pg_wal at its fullest (a slot held, wal_keep_size, the
checkpoints PostgreSQL makes on its own as WAL is written) leaves half the volume to the data."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any, Final

import pytest

from components.database import LEAST_STORAGE_SIZE
from components.quantity import quantity_bytes
from harness.poll import eventually
from harness.postgres import PostgresServer, query
from tests.database_image import TEMPLATE, entrypoint_module, password_files, pod_variables
from tests.services.support import throwaway_postgres

# The smallest volume whose slot limit (a quarter: 384MB) lies beyond wal_keep_size (256MB),
# so that what the test sees kept is kept for the slot alone.
STORAGE_SIZE: Final = "1.5Gi"
# The parameters that decide how much WAL stays in pg_wal.
RETENTION: Final = ("wal_keep_size", "max_wal_size", "max_slot_wal_keep_size")
# Patroni's slot for the member database-1 (its name, made a slot name).
SLOT: Final = "database_1"
MB: Final = 2**20
# What a standby logs when the primary no longer has the WAL it asks for (or, from PostgreSQL
# 18, when its slot was given up).
GONE: Final = ("has already been removed", "can no longer access replication slot")


def megabytes(value: object) -> int:
    """A size in PostgreSQL's MB, as the image's parameters give it (`256MB`)."""
    return int(str(value).removesuffix("MB"))


def image_parameters(
    root: Path, monkeypatch: pytest.MonkeyPatch, storage_size: str = STORAGE_SIZE
) -> dict[str, Any]:
    """PostgreSQL's parameters on an instance of a stack whose storageSize is `storage_size`:
    the cluster's (patroni.yml's bootstrap.dcs), overridden by the instance's own (the
    entrypoint's), as Patroni merges them."""
    secrets = root / "secrets"
    secrets.mkdir()
    for variable, path in password_files(secrets).items():
        Path(path).write_text("password\n")
        monkeypatch.setenv(variable, path)
    monkeypatch.setenv("PATRONI_CONFIG_TEMPLATE", str(TEMPLATE))
    for name, value in pod_variables(
        "database-0", "10.0.0.10", quantity_bytes(storage_size)
    ).items():
        monkeypatch.setenv(name, value)
    settings = entrypoint_module()["configuration"]()
    return {
        **settings["bootstrap"]["dcs"]["postgresql"]["parameters"],
        **settings["postgresql"]["parameters"],
    }


def apply_by_reload(server: PostgresServer, parameters: dict[str, Any]) -> None:
    """`parameters` in the server's configuration, then a reload, as Patroni changes them; each
    must take effect without a restart."""
    for name, value in parameters.items():
        query(server.dsn(), f"ALTER SYSTEM SET {name} = '{value}'")
    query(server.dsn(), "SELECT pg_reload_conf()")
    names = list(parameters)

    def applied() -> bool:
        rows = query(
            server.dsn(),
            "SELECT name, setting || coalesce(unit, '') AS value, pending_restart"
            " FROM pg_settings WHERE name = any($1::text[])",
            names,
        )
        return all(not row["pending_restart"] for row in rows) and {
            row["name"]: row["value"] for row in rows
        } == {name: str(value) for name, value in parameters.items()}

    eventually(applied, f"{names} applied by a reload", 10)


def slot(server: PostgresServer) -> dict[str, Any]:
    (row,) = query(
        server.dsn(),
        "SELECT active, wal_status, restart_lsn::text FROM pg_replication_slots"
        " WHERE slot_name = $1",
        SLOT,
    )
    return dict(row)


def wal_since(server: PostgresServer, start: str) -> int:
    """The bytes of WAL the server has written since `start`."""
    (row,) = query(
        server.dsn(),
        "SELECT pg_wal_lsn_diff(pg_current_wal_lsn(), $1::text::pg_lsn) AS ahead",
        start,
    )
    return int(row["ahead"])


def write_wal_past(server: PostgresServer, start: str, megabytes: int) -> None:
    """WAL written until the server's current position is `megabytes` past `start`, in whole
    segments, then a checkpoint: where PostgreSQL removes old WAL, and gives up a slot that
    holds too much."""
    while wal_since(server, start) < megabytes * MB:
        server.next_wal_segment()
    query(server.dsn(), "CHECKPOINT")


@pytest.fixture
def primary() -> Iterator[PostgresServer]:
    with throwaway_postgres() as server:
        yield server


def test_a_stopped_standby_s_slot_is_given_up_past_the_volume_s_limit(
    primary: PostgresServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    parameters = image_parameters(tmp_path, monkeypatch)
    apply_by_reload(primary, {name: parameters[name] for name in RETENTION if name in parameters})
    # -1: PostgreSQL's default, no limit.
    limit_mb = megabytes(parameters.get("max_slot_wal_keep_size", "-1"))
    # Beyond wal_keep_size: what stays there stays for the slot alone.
    within = megabytes(parameters["wal_keep_size"]) + 64
    # The slot as Patroni makes it on the primary for each member: WAL reserved at once.
    query(primary.dsn(), "SELECT pg_create_physical_replication_slot($1, true)", SLOT)
    standby = primary.standby(slot=SLOT)
    try:
        eventually(lambda: slot(primary)["active"], "the standby streams through its slot", 30)
        standby.stop()
        eventually(lambda: not slot(primary)["active"], "the stopped standby's slot idle", 30)
        start = slot(primary)["restart_lsn"]

        write_wal_past(primary, start, within)
        # Kept: the WAL since the standby stopped is all there (PostgreSQL's "reserved" or
        # "extended", not "unreserved": to be removed at the next checkpoint).
        kept = slot(primary)
        assert kept["restart_lsn"] == start
        assert kept["wal_status"] in ("reserved", "extended")

        write_wal_past(primary, start, max(limit_mb, within) + 64)
        assert slot(primary)["wal_status"] == "lost"

        # Back, the standby finds the WAL it needs gone: streaming cannot bring it back.
        standby.start()
        eventually(
            lambda: any(gone in standby.log.read_text() for gone in GONE),
            "the standby told the WAL it needs is gone",
            30,
        )
    finally:
        standby.destroy()


def pg_wal_bytes(server: PostgresServer) -> int:
    (row,) = query(server.dsn(), "SELECT sum(size) AS size FROM pg_ls_waldir()")
    return int(row["size"])


def test_on_the_least_volume_pg_wal_leaves_half_of_it_to_the_data(
    primary: PostgresServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A member's slot that nothing streams from (as for a standby whose pod runs no PostgreSQL)
    and wal_keep_size both hold WAL back; max_wal_size spaces the checkpoints that remove what
    neither holds. WAL is written, a segment at a time, well past all three together, and
    pg_wal measured after each: at its fullest it is within half the volume."""
    parameters = image_parameters(tmp_path, monkeypatch, LEAST_STORAGE_SIZE)
    apply_by_reload(primary, {name: parameters[name] for name in RETENTION})
    query(primary.dsn(), "SELECT pg_create_physical_replication_slot($1, true)", SLOT)
    (start,) = query(primary.dsn(), "SELECT pg_current_wal_lsn()::text AS lsn")
    through_mb = 2 * sum(megabytes(parameters[name]) for name in RETENTION)
    fullest = pg_wal_bytes(primary)
    while wal_since(primary, start["lsn"]) < through_mb * MB:
        primary.next_wal_segment()
        fullest = max(fullest, pg_wal_bytes(primary))
    # The checkpoints PostgreSQL made on its own gave the slot up on the way: it held all it may.
    assert slot(primary)["wal_status"] == "lost"
    assert fullest <= quantity_bytes(LEAST_STORAGE_SIZE) / 2, f"pg_wal reached {fullest // MB}MB"
