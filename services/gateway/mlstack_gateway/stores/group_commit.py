"""Group commit, for both stores: the rows of concurrent requests committed in one transaction.

Each caller queues its row and waits. A writer task asks the store to write a batch; the store
takes the batch (every row queued so far, at most ``max_batch``) at the moment it can write it,
commits it in one transaction, and the writer then wakes every caller in that batch with the
verdict, and with what the store answers for its row, if anything (both stores: what an
idempotency key's earlier request stored). Rows that arrive while a commit is in flight wait for
the next one, so throughput grows with concurrency while each caller returns only once its own
row is committed.

Up to ``max_in_flight`` writers run at once. PostgreSQL's store runs one: each commit takes
every row that arrived during the last. SQLite's one writer thread takes the rows itself when it
is free: with two writers, the next write is already waiting in the thread when a commit ends,
and its batch holds every row that arrived until then (no trip through the event loop between
two commits).

A caller waits at most ``timeout`` seconds, then gets StoreUnavailableError. Its row may still be
committed afterwards if its batch was already taken (a 503 promises nothing either way); one
still queued is dropped, so a stalled database does not pile up work for nobody.

A batch that holds keyed records (an Idempotency-Key's) is written by both stores alike: its
records first with their request_id are inserted (``firsts``), and the keyed ones the insert
did not write are answered from what is stored (``keyed_not_inserted``).
"""

from __future__ import annotations

import asyncio
import collections
import logging
from collections.abc import Awaitable, Callable, Mapping
from typing import Generic, TypeVar

from mlstack_gateway.metrics import GatewayMetrics
from mlstack_gateway.stores.base import PredictionRecord, StoreUnavailableError

log = logging.getLogger("mlstack_gateway.store")

T = TypeVar("T")
R = TypeVar("R")
_Entry = tuple[T, asyncio.Future[R | None]]


class GroupCommitter(Generic[T, R]):
    def __init__(
        self,
        write_batch: Callable[[Callable[[], list[T]]], Awaitable[Mapping[int, R] | None]],
        metrics: GatewayMetrics,
        *,
        timeout: float,
        max_batch: int = 512,
        max_in_flight: int = 1,
    ) -> None:
        """``write_batch(take)`` calls ``take()`` once, when it is ready to write (from any one
        thread), and commits exactly the rows it returns (none: nothing to do). It may return,
        by their positions in that list, what some of them are answered with (their callers'
        results); the others, and all of them when it returns None, get None."""
        self._write_batch = write_batch
        self._metrics = metrics
        self._timeout = timeout
        self._max_batch = max_batch
        self._max_in_flight = max_in_flight
        # A deque: appended on the event loop, taken from by the store's writer, whichever
        # thread that is (one append or popleft is atomic).
        self._pending: collections.deque[_Entry[T, R]] = collections.deque()
        # Every caller not answered yet, with its deadline, oldest first. The timeout is the same
        # for all, so arrival order is deadline order and one timer, set for the oldest, serves
        # them all (cheaper than a timer per caller).
        self._waiting: collections.deque[tuple[float, asyncio.Future[R | None]]] = (
            collections.deque()
        )
        self._expiry: asyncio.TimerHandle | None = None
        # Writers still draining. Counted apart from the tasks, which leave the set only in a
        # done callback, one loop turn after they stop taking rows.
        self._draining = 0
        self._writers: set[asyncio.Task[None]] = set()

    async def submit(self, item: T) -> R | None:
        """Return once ``item`` is committed, with what write_batch answered for it; raise what
        the commit raised otherwise."""
        loop = asyncio.get_running_loop()
        future: asyncio.Future[R | None] = loop.create_future()
        self._pending.append((item, future))
        deadline = loop.time() + self._timeout
        self._waiting.append((deadline, future))
        if self._expiry is None:
            self._expiry = loop.call_at(deadline, self._expire)
        if self._draining < self._max_in_flight:
            self._draining += 1
            writer = loop.create_task(self._drain())
            self._writers.add(writer)
            writer.add_done_callback(self._writers.discard)
        return await future

    def _expire(self) -> None:
        """Fail every caller past its deadline; set the timer for the next one."""
        loop = asyncio.get_running_loop()
        now = loop.time()
        waiting = self._waiting
        while waiting and (waiting[0][1].done() or waiting[0][0] <= now):
            _, future = waiting.popleft()
            if not future.done():
                self._metrics.db_failures.inc()
                future.set_exception(
                    StoreUnavailableError(f"database write not confirmed within {self._timeout:g}s")
                )
        self._expiry = loop.call_at(waiting[0][0], self._expire) if waiting else None

    def _take(self) -> list[_Entry[T, R]]:
        """Up to ``max_batch`` queued rows whose callers are still waiting."""
        pending = self._pending
        batch: list[_Entry[T, R]] = []
        while len(batch) < self._max_batch:
            try:
                entry = pending.popleft()
            except IndexError:
                break
            if not entry[1].done():
                batch.append(entry)
        return batch

    async def _drain(self) -> None:
        try:
            await self._commit_pending()
        finally:
            self._draining -= 1

    async def _commit_pending(self) -> None:
        loop = asyncio.get_running_loop()
        metrics = self._metrics
        while self._pending:
            batch = _Batch(self._take)
            started = loop.time()
            try:
                results = await self._write_batch(batch.take)
                if not batch.taken:
                    raise RuntimeError("write_batch returned without taking its rows")
            except Exception as exc:  # every waiter learns the commit failed
                if not batch.taken:  # failed before taking: fail the rows it would have taken
                    batch.take()
                if not isinstance(exc, StoreUnavailableError):  # the store logs its outages
                    log.warning("commit of %d rows failed: %s", len(batch.entries), exc)
                self._answer(batch.entries, exc, None)
                continue
            if batch.entries:
                metrics.commit_rows.observe(len(batch.entries))
                metrics.commit_seconds.observe(loop.time() - started)
            self._answer(batch.entries, None, results)

    def _answer(
        self,
        batch: list[_Entry[T, R]],
        error: Exception | None,
        results: Mapping[int, R] | None,
    ) -> None:
        for index, (_, future) in enumerate(batch):
            if future.done():  # its caller gave up meanwhile
                continue
            if error is None:
                future.set_result(results.get(index) if results else None)
            else:
                future.set_exception(error)
        waiting = self._waiting
        while waiting and waiting[0][1].done():
            waiting.popleft()

    async def close(self) -> None:
        """Wait for queued rows to be written (their callers are still waiting for them)."""
        while self._writers:
            await asyncio.gather(*self._writers, return_exceptions=True)


class _Batch(Generic[T, R]):
    """The rows of one commit, taken when the store calls ``take``."""

    def __init__(self, take_entries: Callable[[], list[_Entry[T, R]]]) -> None:
        self._take_entries = take_entries
        self.entries: list[_Entry[T, R]] = []
        self.taken = False

    def take(self) -> list[T]:
        self.taken = True
        self.entries = self._take_entries()
        return [item for item, _ in self.entries]


def firsts(records: list[PredictionRecord]) -> list[bool]:
    """Whether each record is the first of the batch with its request_id: requests in flight with
    one Idempotency-Key share a batch, and one statement may write a row once."""
    seen: set[str] = set()
    first: list[bool] = []
    for r in records:
        first.append(r.request_id not in seen)
        seen.add(r.request_id)
    return first


def keyed_not_inserted(
    records: list[PredictionRecord], first: list[bool], inserted: set[str]
) -> list[int]:
    """The indexes of the keyed records whose row the batch's insert (of the ``first`` ones, of
    which it inserted ``inserted``) did not write: stored already under their key, or written by
    another record of the batch with it. Each is answered with what is stored."""
    return [
        index
        for index, r in enumerate(records)
        if r.keyed and not (first[index] and r.request_id in inserted)
    ]
