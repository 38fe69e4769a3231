"""The schema migration runner, for both stores: numbered migrations, each applied once, in order.

Each store gives its migrations (its own SQL) and a ``SchemaConnection`` over its own connection.
The runner takes the store's schema lock in a transaction, reads which versions are applied,
applies the others and records them, and commits once: gateways that start together (replicas,
or several processes on one SQLite file) queue on the lock, and the first migrates while the
others then find nothing left to do. A migration that fails rolls back the whole run.

A gateway that may not change the schema (DATABASE_MIGRATE=false) only reads which versions are
applied (APPLIED).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from contextlib import AbstractAsyncContextManager
from typing import Any, Protocol

log = logging.getLogger("mlstack_gateway.store")

# Plain SQL that PostgreSQL and SQLite both take.
_MIGRATIONS_TABLE = """
CREATE TABLE IF NOT EXISTS schema_migrations (
    version INTEGER PRIMARY KEY,
    applied_at TEXT NOT NULL
)
"""
# The versions applied: a plain SELECT (schema_migrations exists once a run has begun).
APPLIED = "SELECT version FROM schema_migrations"
_RECORD = "INSERT INTO schema_migrations (version, applied_at) VALUES ({:d}, CURRENT_TIMESTAMP)"


class SchemaConnection(Protocol):
    """What the runner needs of a store's connection."""

    def locked_transaction(self) -> AbstractAsyncContextManager[None]:
        """A transaction that holds the store's schema lock until it ends: committed when the
        block exits normally, rolled back when it raises."""
        ...

    async def execute(self, statement: str) -> None: ...

    async def column(self, query: str) -> list[Any]:
        """The first column of every row ``query`` returns."""
        ...


async def migrate(conn: SchemaConnection, migrations: Sequence[tuple[int, str]]) -> list[int]:
    """Apply the migrations ``(version, statement)`` not applied yet; return their versions."""
    versions = [version for version, _ in migrations]
    if versions != sorted(set(versions)):
        raise ValueError(f"migration versions must be unique and ascending, got {versions}")
    applied_now: list[int] = []
    async with conn.locked_transaction():
        await conn.execute(_MIGRATIONS_TABLE)
        applied = set(await conn.column(APPLIED))
        for version, statement in migrations:
            if version in applied:
                continue
            await conn.execute(statement)
            await conn.execute(_RECORD.format(version))
            applied_now.append(version)
    for version in applied_now:
        log.info("applied migration %d", version)
    return applied_now
