"""Where answered predictions are kept: the interface, the row, and the factory."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Protocol

from mlstack_gateway.metrics import GatewayMetrics
from mlstack_gateway.settings import GatewaySettings

# An advisory-lock key all replicas share, so that only one migrates the schema at a time.
MIGRATION_LOCK_KEY = 0x6D6C737461636B  # "mlstack"


@dataclass(frozen=True, slots=True)
class PredictionRecord:
    request_id: str
    model_name: str
    model_version: str
    # JSON text of the request's instances and the model's predictions.
    instances_json: str
    predictions_json: str
    latency_ms: float


class StoreUnavailableError(Exception):
    """The database cannot take the write (or read) now."""


class PredictionStore(Protocol):
    kind: str

    async def open(self) -> None:
        """Connect and create or migrate the schema."""

    async def save(self, record: PredictionRecord) -> None:
        """Return only once the record is committed; raise StoreUnavailableError otherwise."""

    async def recent(self, limit: int) -> list[dict[str, Any]]:
        """The newest ``limit`` records, newest first."""

    async def ping(self) -> bool:
        """Whether the database answers now."""

    async def close(self) -> None:
        """Finish pending writes, then release connections."""


def open_store(settings: GatewaySettings, metrics: GatewayMetrics) -> PredictionStore:
    if settings.database_url:
        from mlstack_gateway.store_postgres import PostgresStore

        return PostgresStore(settings, metrics)
    from mlstack_gateway.store_sqlite import SqliteStore

    return SqliteStore(settings, metrics)
