"""The database schema, as numbered migrations applied once each, in order."""

from __future__ import annotations

POSTGRES_MIGRATIONS: list[tuple[int, str]] = [
    (
        1,
        """
        CREATE TABLE IF NOT EXISTS predictions (
            id BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
            request_id UUID NOT NULL UNIQUE,
            created_at TIMESTAMPTZ NOT NULL DEFAULT now(),
            model_name TEXT NOT NULL,
            model_version TEXT NOT NULL,
            instances JSONB NOT NULL,
            predictions JSONB NOT NULL,
            latency_ms DOUBLE PRECISION NOT NULL
        )
        """,
    ),
]

SQLITE_MIGRATIONS: list[tuple[int, str]] = [
    (
        1,
        """
        CREATE TABLE IF NOT EXISTS predictions (
            id INTEGER PRIMARY KEY AUTOINCREMENT,
            request_id TEXT NOT NULL UNIQUE,
            created_at TEXT NOT NULL DEFAULT (strftime('%Y-%m-%dT%H:%M:%fZ', 'now')),
            model_name TEXT NOT NULL,
            model_version TEXT NOT NULL,
            instances TEXT NOT NULL,
            predictions TEXT NOT NULL,
            latency_ms REAL NOT NULL
        )
        """,
    ),
]

MIGRATIONS_TABLE = """
CREATE TABLE IF NOT EXISTS schema_migrations (
    version INTEGER PRIMARY KEY,
    applied_at TEXT NOT NULL
)
"""
