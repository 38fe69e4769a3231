"""Group commit: concurrent requests' rows are written in one transaction.

Each caller appends its row and awaits a future. A writer task takes everything queued so far,
commits it in one transaction, then resolves every waiting future (or fails them all). While a
commit is in flight new rows queue up for the next one, so throughput grows with concurrency
while every caller still returns only after its own row is durable. Up to ``max_in_flight``
writers run at once (PostgreSQL flushes concurrent commits together; SQLite takes one).
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Generic, TypeVar

T = TypeVar("T")


class GroupCommitter(Generic[T]):
    def __init__(
        self,
        write_batch: Callable[[list[T]], Awaitable[None]],
        max_batch: int = 256,
        max_in_flight: int = 1,
        on_commit: Callable[[int, float], None] | None = None,
    ) -> None:
        self._write_batch = write_batch
        self._max_batch = max_batch
        self._max_in_flight = max_in_flight
        self._on_commit = on_commit
        self._pending: list[tuple[T, asyncio.Future[None]]] = []
        self._writers: set[asyncio.Task[None]] = set()

    async def submit(self, item: T) -> None:
        """Return once ``item`` is committed; raise what the commit raised otherwise."""
        loop = asyncio.get_running_loop()
        future: asyncio.Future[None] = loop.create_future()
        self._pending.append((item, future))
        if len(self._writers) < self._max_in_flight:
            writer = loop.create_task(self._drain())
            self._writers.add(writer)
            writer.add_done_callback(self._writers.discard)
        await future

    async def _drain(self) -> None:
        loop = asyncio.get_running_loop()
        while self._pending:
            batch = self._pending[: self._max_batch]
            del self._pending[: self._max_batch]
            started = loop.time()
            try:
                await self._write_batch([item for item, _ in batch])
            except Exception as exc:  # every waiter learns the commit failed
                for _, future in batch:
                    if not future.done():
                        future.set_exception(exc)
                continue
            if self._on_commit is not None:
                self._on_commit(len(batch), loop.time() - started)
            for _, future in batch:
                if not future.done():
                    future.set_result(None)

    async def close(self) -> None:
        """Wait for queued rows to be written (their callers are still waiting for them)."""
        while self._writers:
            await asyncio.gather(*self._writers, return_exceptions=True)
