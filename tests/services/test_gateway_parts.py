"""The gateway's circuit breaker and group commit, in-process."""

from __future__ import annotations

import asyncio

import pytest
from mlstack_gateway.breaker import BreakerState, CircuitBreaker
from mlstack_gateway.group_commit import GroupCommitter


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


def test_half_open_lets_one_trial_through_and_its_success_closes() -> None:
    clock = FakeClock()
    breaker = CircuitBreaker(failure_threshold=1, reset_seconds=1.0, clock=clock)
    breaker.record_failure()
    clock.now += 1.0
    assert breaker.allow()  # the trial
    assert state_of(breaker) is BreakerState.HALF_OPEN
    assert not breaker.allow()  # everyone else waits for its verdict
    breaker.record_success()
    assert state_of(breaker) is BreakerState.CLOSED
    assert breaker.allow()


def test_failed_trial_reopens_for_another_period() -> None:
    clock = FakeClock()
    breaker = CircuitBreaker(failure_threshold=1, reset_seconds=1.0, clock=clock)
    breaker.record_failure()
    clock.now += 1.0
    assert breaker.allow()
    breaker.record_failure()
    assert state_of(breaker) is BreakerState.OPEN
    clock.now += 0.5
    assert not breaker.allow()
    assert breaker.retry_after_seconds() == pytest.approx(0.5)


def test_cancelled_trial_lets_another_trial_go() -> None:
    clock = FakeClock()
    breaker = CircuitBreaker(failure_threshold=1, reset_seconds=1.0, clock=clock)
    breaker.record_failure()
    clock.now += 1.0
    assert breaker.allow()
    breaker.release()
    assert breaker.allow()


def test_concurrent_submits_share_one_commit() -> None:
    batches: list[list[int]] = []

    async def write(batch: list[int]) -> None:
        await asyncio.sleep(0.01)
        batches.append(batch)

    async def run() -> None:
        committer: GroupCommitter[int] = GroupCommitter(write)
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
        committer: GroupCommitter[int] = GroupCommitter(write)
        await committer.submit(7)
        assert committed == [7]

    asyncio.run(run())


def test_a_failed_commit_fails_every_waiter_in_it() -> None:
    async def write(batch: list[int]) -> None:
        await asyncio.sleep(0)
        raise OSError("disk gone")

    async def run() -> list[BaseException | None]:
        committer: GroupCommitter[int] = GroupCommitter(write)
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

    async def arrive(committer: GroupCommitter[int], i: int) -> None:
        await asyncio.sleep(i * 0.001)  # callers trickle in while commits are in flight
        await committer.submit(i)

    async def run() -> None:
        committer: GroupCommitter[int] = GroupCommitter(write, max_in_flight=3)
        await asyncio.gather(*(arrive(committer, i) for i in range(60)))

    asyncio.run(run())
    assert peak == 3
