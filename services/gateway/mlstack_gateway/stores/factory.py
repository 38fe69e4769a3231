"""The store the settings name: PostgreSQL with DATABASE_URL, else the embedded SQLite file."""

from __future__ import annotations

from mlstack_gateway.metrics import GatewayMetrics
from mlstack_gateway.settings import GatewaySettings
from mlstack_gateway.stores.base import PredictionStore


def open_store(settings: GatewaySettings, metrics: GatewayMetrics) -> PredictionStore:
    # Imported here: a gateway on SQLite never loads asyncpg, one on PostgreSQL never the
    # SQLite writer.
    if settings.database_url:
        from mlstack_gateway.stores.postgres import PostgresStore

        return PostgresStore(settings, metrics)
    from mlstack_gateway.stores.sqlite import SqliteStore

    return SqliteStore(settings, metrics)
