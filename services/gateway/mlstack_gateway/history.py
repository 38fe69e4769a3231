"""A page of ``GET /api/v1/predictions``: bounded in rows (``limit``) and in bytes
(HISTORY_MAX_BYTES), with a cursor for the next one.

The stores hand each row they read to a ``PageBuilder`` as they read it, and stop reading when
it is full; the page's body is built from the items it kept, already serialized, so the bytes a
read holds are those of the answer, whatever the rows weigh. A page holds at least one
prediction (else paging could not move on), so one prediction larger than the budget makes a
page of its own.

The cursor is the id of the page's last (oldest) row: the next page lists the rows older than
it, newest first. Each store gives ids in the order of the commits (SQLite: one writer at a time;
PostgreSQL: see its _INSERT), so a prediction committed while a client pages is listed above
the first page it read, never below a cursor it holds. Clients are told the cursor is opaque;
it is checked as a positive 64-bit integer.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import orjson

from mlstack_gateway.errors import ApiError

# Above every stored id (PostgreSQL's BIGINT and SQLite's INTEGER both stop here): the first
# page reads the rows below it.
NEWEST = 2**63 - 1
_CURSOR_DIGITS = len(str(NEWEST))
# An upper bound of what an item weighs besides its four text columns (model_name,
# model_version, instances, predictions): its keys and punctuation, a request id, a timestamp,
# a latency and the comma between items. The databases cut a page by it; the builder measures.
ROW_OVERHEAD_BYTES = 224


@dataclass(frozen=True, slots=True)
class HistoryPage:
    # Each item serialized, newest first.
    items: list[bytes]
    # Where the next page starts, or None when no older row is left.
    next_cursor: int | None

    def body(self, limit: int) -> bytes:
        """The answer: ``{"items": [...], "limit": N, "next_cursor": "..." | null}``."""
        cursor = b"null" if self.next_cursor is None else b'"%d"' % self.next_cursor
        return b"".join(
            (
                b'{"items":[',
                b",".join(self.items),
                b'],"limit":%d,"next_cursor":%s}' % (limit, cursor),
            )
        )


def item_room(limit: int, max_bytes: int) -> int:
    """The bytes a page's items may take, commas included: ``max_bytes`` less what
    ``HistoryPage.body`` adds to them at most."""
    return max_bytes - len(HistoryPage([], NEWEST).body(limit))


class PageBuilder:
    """Takes rows newest first while they fit in ``limit`` rows and ``max_bytes`` of answer."""

    def __init__(self, limit: int, max_bytes: int) -> None:
        self._limit = limit
        self._room = item_room(limit, max_bytes)
        self._items: list[bytes] = []
        self._last_id: int | None = None
        self._more = False

    def add(self, row_id: int, item: dict[str, Any]) -> bool:
        """Keep the row if the page has room for it; False once it has not (the row, and any
        after it, belong to the next page)."""
        if len(self._items) >= self._limit:
            self._more = True
            return False
        data = orjson.dumps(item)
        cost = len(data) + (1 if self._items else 0)
        if self._items and cost > self._room:
            self._more = True
            return False
        self._items.append(data)
        self._room -= cost
        self._last_id = row_id
        return True

    def older_rows_left(self) -> None:
        """Say that rows older than the last one kept exist (the page may hold all it was
        given and still not be the last)."""
        self._more = True

    def page(self) -> HistoryPage:
        return HistoryPage(self._items, self._last_id if self._more else None)


def parse_cursor(raw: str) -> int:
    """The row id a ``cursor`` query parameter names; 400 for anything a page did not give."""
    if raw.isascii() and raw.isdigit() and 0 < len(raw) <= _CURSOR_DIGITS:
        value = int(raw)
        if 1 <= value <= NEWEST:
            return value
    raise ApiError(
        400,
        f"cursor must be the next_cursor of a previous page (a positive integer), got {raw[:40]!r}",
    )
