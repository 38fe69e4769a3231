"""harness.poll: the one loop that waits for a condition until a deadline (and its form for a
check that awaits)."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable

import pytest

from harness.poll import eventually_async, poll


def slow_check(answers: list[bool], seconds: float) -> tuple[list[float], Callable[[], bool]]:
    """A condition that takes `seconds` to answer each of `answers` in turn, and the times its
    checks started."""
    started: list[float] = []

    def condition() -> bool:
        started.append(time.monotonic())
        time.sleep(seconds)
        return answers[len(started) - 1]

    return started, condition


def test_a_check_that_ends_past_the_deadline_is_followed_by_one_that_starts_there() -> None:
    # The first check starts before the deadline and ends after it: what it saw is older than
    # the deadline, so the condition is checked once more, and holds then.
    started, condition = slow_check([False, True], 0.2)
    begun = time.monotonic()
    assert poll(condition, 0.05, interval=0.01)
    assert len(started) == 2
    assert started[1] >= begun + 0.05


def test_a_timeout_is_reported_after_a_check_that_started_at_or_after_the_deadline() -> None:
    started, condition = slow_check([False] * 100, 0.02)
    begun = time.monotonic()
    assert not poll(condition, 0.1, interval=0.01)
    assert started[-1] >= begun + 0.1
    assert all(start < begun + 0.1 for start in started[:-1])


def test_a_condition_that_holds_at_once_is_checked_once() -> None:
    started, condition = slow_check([True], 0)
    assert poll(condition, 0)
    assert len(started) == 1


def slow_async_check(
    answers: list[bool], seconds: float
) -> tuple[list[float], Callable[[], Awaitable[bool]]]:
    """slow_check's condition as a coroutine, which sleeps in the event loop."""
    started: list[float] = []

    async def condition() -> bool:
        started.append(time.monotonic())
        await asyncio.sleep(seconds)
        return answers[len(started) - 1]

    return started, condition


def test_an_awaited_check_ending_past_the_deadline_is_followed_by_one_starting_there() -> None:
    started, condition = slow_async_check([False, True], 0.2)
    begun = time.monotonic()
    asyncio.run(eventually_async(condition, "the condition", 0.05, interval=0.01))
    assert len(started) == 2
    assert started[1] >= begun + 0.05


def test_an_awaited_check_that_never_holds_fails_after_one_at_or_after_the_deadline() -> None:
    started, condition = slow_async_check([False] * 100, 0.02)
    begun = time.monotonic()
    with pytest.raises(AssertionError, match="waiting for the condition"):
        asyncio.run(eventually_async(condition, "the condition", 0.1, interval=0.01))
    assert started[-1] >= begun + 0.1
    assert all(start < begun + 0.1 for start in started[:-1])
