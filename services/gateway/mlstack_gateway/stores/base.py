"""What every store shares: the interface, the row it keeps, the error it raises. The stores,
the group commit and the migrations import it; it imports none of them."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Protocol

import orjson

from mlstack_gateway.history import HistoryPage


@dataclass(frozen=True, slots=True)
class PredictionRecord:
    request_id: str
    model_name: str
    model_version: str
    # JSON text of the request's instances and the model's predictions.
    instances_json: str
    predictions_json: str
    latency_ms: float
    # Whether ``request_id`` is the client's Idempotency-Key, under which a row may be stored
    # already (its request sent before): the store then answers with that row (save). False:
    # an id the gateway made, new.
    keyed: bool = False


@dataclass(frozen=True, slots=True)
class StoredPrediction:
    """What a keyed record's ``request_id`` holds when the record itself was not stored: the row
    an earlier request with the same key stored, or one in flight with it (its answer, which a
    retry gets), and whether that request had the same instances (if not, the key was used for
    another request)."""

    model_version: str
    predictions_json: str
    same_instances: bool


class Row(Protocol):
    """A database row as both drivers give it: its columns by position."""

    def __getitem__(self, index: int) -> Any: ...


def history_item(row: Row, created_at: str) -> dict[str, Any]:
    """A stored prediction as ``GET /api/v1/predictions`` lists it. ``row``: request_id,
    created_at, model_name, model_version, instances, predictions, latency_ms, the two JSON
    columns as text (embedded in the answer as they are)."""
    return {
        "request_id": row[0],
        "created_at": created_at,
        "model_name": row[2],
        "model_version": row[3],
        "instances": orjson.Fragment(row[4]),
        "predictions": orjson.Fragment(row[5]),
        "latency_ms": row[6],
    }


class StoreUnavailableError(Exception):
    """The database cannot take the write (or read) now. Its message is the client's to read (a
    503's error): the gateway's words, never the driver's, which the log keeps."""


class PredictionStore(Protocol):
    kind: str

    async def open(self) -> None:
        """Connect and create or migrate the schema (PostgreSQL with DATABASE_MIGRATE=false:
        check that it is current, and treat the database as not connected until it is)."""

    async def save(self, record: PredictionRecord) -> StoredPrediction | None:
        """Return only once the record is committed; raise StoreUnavailableError otherwise.

        A keyed record whose ``request_id`` is stored already is not stored again: the row
        found is returned instead once it is committed as a new row would be (on PostgreSQL,
        confirmed by the synchronous standby where the server has one). None: the record is
        stored now."""

    async def stored(self, request_id: str, instances_json: str) -> StoredPrediction | None:
        """What a keyed request stored under ``request_id`` (an Idempotency-Key), for its retry
        while the model fails or is away: returned once it is committed as a row ``save`` finds
        is, and compared with ``instances_json``. None: nothing is stored under it. Raise
        StoreUnavailableError when the database cannot tell, or not confirm it, now."""

    async def recent(self, limit: int, before: int) -> HistoryPage:
        """The newest records with ids below ``before``, newest first: at most ``limit`` of
        them and HISTORY_MAX_BYTES of answer, read no further than the page needs."""

    async def ping(self) -> bool:
        """Ask each database whether it answers now, each within a bound of its own (the
        background dependency check); whether the one that takes writes does."""

    def awaiting_migrations(self) -> bool:
        """Whether the database holds an older schema than this gateway's, which it may not
        migrate itself (DATABASE_MIGRATE=false): a rollout whose migrations have not run yet,
        while the version before can still serve. A database with no schema at all (a new
        stack's) is not such a case: no version can serve it before its migrations."""

    def reachable(self) -> dict[str, bool]:
        """Each database this store uses (``database``, and ``database_read`` with
        DATABASE_READ_URL) and whether it answered when last asked, by a request or a ping."""

    async def close(self) -> None:
        """Finish pending writes, then release connections."""
