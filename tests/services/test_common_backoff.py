"""The services' one backoff (services/common: mlstack_common.backoff), in-process."""

from __future__ import annotations

import asyncio
import random

import pytest
from mlstack_common.backoff import Backoff


def slept(monkeypatch: pytest.MonkeyPatch) -> list[float]:
    pauses: list[float] = []

    async def sleep(seconds: float) -> None:
        pauses.append(seconds)

    monkeypatch.setattr(asyncio, "sleep", sleep)
    return pauses


def test_pauses_double_up_to_the_most(monkeypatch: pytest.MonkeyPatch) -> None:
    pauses = slept(monkeypatch)

    async def five() -> list[bool]:
        retry = Backoff(0.1, most=0.5).start()
        return [await retry.wait() for _ in range(5)]

    assert asyncio.run(five()) == [True] * 5
    assert pauses == [0.1, 0.2, 0.4, 0.5, 0.5]


def test_no_try_past_the_retries(monkeypatch: pytest.MonkeyPatch) -> None:
    pauses = slept(monkeypatch)

    async def four() -> list[bool]:
        retry = Backoff(0.01, retries=2).start()
        return [await retry.wait() for _ in range(4)]

    assert asyncio.run(four()) == [True, True, False, False]
    assert pauses == [0.01, 0.02]


def test_no_pause_that_would_end_past_the_deadline(monkeypatch: pytest.MonkeyPatch) -> None:
    pauses = slept(monkeypatch)

    async def until_deadline() -> list[bool]:
        deadline = asyncio.get_running_loop().time() + 25
        retry = Backoff(10).start(deadline)
        # Sleep is patched, so the clock barely moves (seconds to spare, however slow the
        # machine): pauses of 10 and 20 s end before the deadline, one of 40 s would not.
        return [await retry.wait() for _ in range(3)]

    assert asyncio.run(until_deadline()) == [True, True, False]
    assert pauses == [10, 20]


def test_full_jitter_draws_each_pause_below_its_step(monkeypatch: pytest.MonkeyPatch) -> None:
    pauses = slept(monkeypatch)
    drawn: list[tuple[float, float]] = []

    def uniform(low: float, high: float) -> float:
        drawn.append((low, high))
        return high / 2

    monkeypatch.setattr(random, "uniform", uniform)

    async def three() -> None:
        retry = Backoff(0.01, jitter=True).start()
        for _ in range(3):
            await retry.wait()

    asyncio.run(three())
    assert drawn == [(0, 0.01), (0, 0.02), (0, 0.04)]
    assert pauses == [0.005, 0.01, 0.02]
