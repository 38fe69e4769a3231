"""The gateway's circuit breaker and group commit, in-process."""

from __future__ import annotations

import asyncio
import math
import time
from collections.abc import Awaitable, Callable

import pytest
from mlstack_gateway.breaker import BreakerState, CircuitBreaker
from mlstack_gateway.metrics import GatewayMetrics
from mlstack_gateway.stores.base import StoreUnavailableError
from mlstack_gateway.stores.group_commit import GroupCommitter


class FakeClock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def state_of(breaker: CircuitBreaker) -> BreakerState:
    return breaker.state


def test_breaker_opens_after_consecutive_failures_and_refuses_calls() -> None:
    clock = FakeClock()
    breaker = CircuitBreaker(failure_threshold=3, reset_seconds=1.0, clock=clock)
    for _ in range(2):
        assert breaker.allow()
        breaker.record_failure()
    assert state_of(breaker) is BreakerState.CLOSED
    assert breaker.allow()
    breaker.record_failure()
    assert state_of(breaker) is BreakerState.OPEN
    assert not breaker.allow()


def test_a_success_resets_the_failure_count() -> None:
    breaker = CircuitBreaker(failure_threshold=2, reset_seconds=1.0, clock=FakeClock())
    breaker.record_failure()
    breaker.record_success()
    breaker.record_failure()
    assert state_of(breaker) is BreakerState.CLOSED


def on_trial() -> tuple[FakeClock, CircuitBreaker]:
    """A breaker that one failure opened, its 1 s open period over and one trial let through."""
    clock = FakeClock()
    breaker = CircuitBreaker(failure_threshold=1, reset_seconds=1.0, clock=clock)
    breaker.record_failure()
    clock.now += 1.0
    assert breaker.allow()  # the trial
    return clock, breaker


def test_half_open_lets_one_trial_through_and_its_success_closes() -> None:
    _, breaker = on_trial()
    assert state_of(breaker) is BreakerState.HALF_OPEN
    assert not breaker.allow()  # everyone else waits for its verdict
    breaker.record_success()
    assert state_of(breaker) is BreakerState.CLOSED
    assert breaker.allow()


def test_failed_trial_reopens_for_another_period() -> None:
    clock, breaker = on_trial()
    breaker.record_failure()
    assert state_of(breaker) is BreakerState.OPEN
    clock.now += 0.5
    assert not breaker.allow()


def test_retry_after_is_the_time_left_open_rounded_up_to_whole_seconds() -> None:
    clock = FakeClock()
    breaker = CircuitBreaker(failure_threshold=1, reset_seconds=5.0, clock=clock)
    breaker.record_failure()
    clock.now += 0.2
    assert breaker.retry_after_seconds() == 5
    clock.now += 3.0
    assert breaker.retry_after_seconds() == 2


def test_retry_after_is_at_least_one_second() -> None:
    clock = FakeClock()
    breaker = CircuitBreaker(failure_threshold=1, reset_seconds=0.1, clock=clock)
    assert breaker.retry_after_seconds() == 1  # closed
    breaker.record_failure()
    assert breaker.retry_after_seconds() == 1  # open for 0.1 s
    clock.now += 0.2
    assert breaker.allow()  # the trial
    assert breaker.retry_after_seconds() == 1  # half-open: its verdict is due shortly


def test_cancelled_trial_lets_another_trial_go() -> None:
    _, breaker = on_trial()
    breaker.release()
    assert breaker.allow()


def new_committer(
    write: Callable[[list[int]], Awaitable[None]],
    timeout: float = 5.0,
    max_in_flight: int = 1,
    metrics: GatewayMetrics | None = None,
) -> GroupCommitter[int, None]:
    """A committer over ``write``, which gets the batch taken as the write starts."""

    async def write_batch(take: Callable[[], list[int]]) -> None:
        await write(take())

    return GroupCommitter(
        write_batch, metrics or GatewayMetrics(), timeout=timeout, max_in_flight=max_in_flight
    )


def test_concurrent_submits_share_one_commit() -> None:
    batches: list[list[int]] = []

    async def write(batch: list[int]) -> None:
        await asyncio.sleep(0.01)
        batches.append(batch)

    async def run() -> None:
        committer = new_committer(write)
        await asyncio.gather(*(committer.submit(i) for i in range(50)))
        await committer.close()

    asyncio.run(run())
    assert sorted(i for batch in batches for i in batch) == list(range(50))
    assert len(batches) <= 2


def test_submit_returns_only_after_its_commit() -> None:
    committed: list[int] = []

    async def write(batch: list[int]) -> None:
        await asyncio.sleep(0.01)
        committed.extend(batch)

    async def run() -> None:
        committer = new_committer(write, timeout=1.0)
        for item in range(3):  # one after the other: each finds the last writer gone
            await committer.submit(item)
            assert committed == list(range(item + 1))

    asyncio.run(run())


def test_a_failed_commit_fails_every_waiter_in_it() -> None:
    async def write(batch: list[int]) -> None:
        await asyncio.sleep(0)
        raise OSError("disk gone")

    async def run() -> list[BaseException | None]:
        committer = new_committer(write)
        return await asyncio.gather(
            *(committer.submit(i) for i in range(5)), return_exceptions=True
        )

    results = asyncio.run(run())
    assert all(isinstance(r, OSError) for r in results)


def test_several_commits_in_flight_when_allowed() -> None:
    in_flight = 0
    peak = 0

    async def write(batch: list[int]) -> None:
        nonlocal in_flight, peak
        in_flight += 1
        peak = max(peak, in_flight)
        await asyncio.sleep(0.01)
        in_flight -= 1

    async def arrive(committer: GroupCommitter[int, None], i: int) -> None:
        await asyncio.sleep(i * 0.001)  # callers trickle in while commits are in flight
        await committer.submit(i)

    async def run() -> None:
        committer = new_committer(write, max_in_flight=3)
        await asyncio.gather(*(arrive(committer, i) for i in range(60)))

    asyncio.run(run())
    assert peak == 3


def test_commits_are_counted_in_the_metrics() -> None:
    metrics = GatewayMetrics()

    async def write(batch: list[int]) -> None:
        await asyncio.sleep(0.01)

    async def run() -> None:
        committer = new_committer(write, metrics=metrics)
        await asyncio.gather(*(committer.submit(i) for i in range(10)))

    asyncio.run(run())
    sample = metrics.registry.get_sample_value
    assert sample("mlstack_gateway_db_commit_rows_sum") == 10
    assert 1 <= (sample("mlstack_gateway_db_commit_rows_count") or 0) <= 2
    assert (sample("mlstack_gateway_db_commit_duration_seconds_sum") or 0) >= 0.01


def test_a_caller_waits_no_longer_than_the_timeout() -> None:
    """A commit that hangs until the test releases it, after the caller's answer: the caller
    gets the error that names its timeout, no sooner than that timeout. No upper bound on the
    seconds is asserted (a busy machine may run the timer late); a caller still waiting after
    30 s fails the test."""
    release = asyncio.Event()
    metrics = GatewayMetrics()

    async def stuck(batch: list[int]) -> None:
        await release.wait()

    async def run() -> float:
        committer = new_committer(stuck, timeout=0.2, metrics=metrics)
        started = time.monotonic()
        caller = asyncio.create_task(committer.submit(1))
        done, _ = await asyncio.wait({caller}, timeout=30)
        elapsed = time.monotonic() - started
        if caller not in done:
            caller.cancel()
            pytest.fail("a caller with a 0.2 s timeout still waiting after 30 s")
        with pytest.raises(StoreUnavailableError, match=r"not confirmed within 0\.2s"):
            caller.result()
        release.set()
        await committer.close()
        return elapsed

    elapsed = asyncio.run(run())
    assert elapsed >= 0.2
    assert metrics.registry.get_sample_value("mlstack_gateway_db_failures_total") == 1


def test_rows_whose_callers_gave_up_before_their_commit_are_not_written() -> None:
    written: list[int] = []
    release = asyncio.Event()

    async def write(batch: list[int]) -> None:
        await release.wait()
        written.extend(batch)

    async def run() -> None:
        committer = new_committer(write, timeout=0.2)
        first = asyncio.create_task(committer.submit(1))  # its commit hangs
        await asyncio.sleep(0.05)
        with pytest.raises(StoreUnavailableError):
            await committer.submit(2)  # queued behind it, gives up
        release.set()
        with pytest.raises(StoreUnavailableError):
            await first
        await committer.close()

    asyncio.run(run())
    assert written == [1]  # the one already being written when its caller gave up


def test_a_store_takes_its_batch_when_it_is_ready_to_write() -> None:
    batches: list[list[int]] = []
    ready = asyncio.Event()

    async def write_batch(take: Callable[[], list[int]]) -> None:
        await ready.wait()  # e.g. its writer thread still busy with the last commit
        batches.append(take())

    async def run() -> None:
        committer: GroupCommitter[int, None] = GroupCommitter(
            write_batch, GatewayMetrics(), timeout=1.0
        )
        first = asyncio.create_task(committer.submit(0))
        await asyncio.sleep(0.01)  # the writer is waiting to write
        later = [asyncio.create_task(committer.submit(i)) for i in range(1, 5)]
        await asyncio.sleep(0.01)
        ready.set()
        await asyncio.gather(first, *later)

    asyncio.run(run())
    assert batches == [[0, 1, 2, 3, 4]]


def test_a_write_that_fails_before_taking_fails_the_queued_callers() -> None:
    attempts = 0

    async def write_batch(take: Callable[[], list[int]]) -> None:
        nonlocal attempts
        attempts += 1
        raise StoreUnavailableError("database not connected yet")

    async def run() -> list[BaseException | None]:
        committer: GroupCommitter[int, None] = GroupCommitter(
            write_batch, GatewayMetrics(), timeout=1.0
        )
        return await asyncio.gather(
            *(committer.submit(i) for i in range(3)), return_exceptions=True
        )

    results = asyncio.run(run())
    assert all(isinstance(r, StoreUnavailableError) for r in results)
    assert "not connected" in str(results[0])
    assert attempts == 1


def test_the_read_lag_is_nan_until_a_read_measures_it() -> None:
    lag = GatewayMetrics().registry.get_sample_value("mlstack_gateway_db_read_lag_seconds")
    assert lag is not None
    assert math.isnan(lag)
