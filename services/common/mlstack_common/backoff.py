"""Trying again with exponential backoff: the one loop behind the gateway's retries of a model call,
of a PostgreSQL write and of a connection to a PostgreSQL that is not there yet.

``Backoff`` is the policy, made once; ``Backoff.start`` gives one operation's ``Retry``, whose
``wait`` sleeps before the next try or says that none is left. What is worth another try, and
what to count or log for it, stays with the caller, which knows its errors. Nothing here runs
before the first failure, so an operation that succeeds at once pays nothing for it.

A small class rather than a retry library (tenacity): the callers decide per error and update
their own state between tries, and the model call's retries sit on the gateway's hot path.
"""

from __future__ import annotations

import asyncio
import math
import random
from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class Backoff:
    """Pauses of ``first`` seconds, doubling after each try up to ``most``. With ``jitter`` each
    pause is drawn uniformly from zero to that ("full jitter": callers that failed together do
    not retry together). ``retries``: how many tries may follow the first; None, no bound."""

    first: float
    most: float = math.inf
    jitter: bool = False
    retries: int | None = None

    def start(self, deadline: float | None = None) -> Retry:
        """The retries of one operation; none is begun whose pause would end at or after
        ``deadline`` (the running loop's time), when one is given."""
        return Retry(self, deadline)


class Retry:
    """One operation's retries under a ``Backoff``."""

    __slots__ = ("_backoff", "_deadline", "retries", "step")

    def __init__(self, backoff: Backoff, deadline: float | None) -> None:
        self._backoff = backoff
        self._deadline = deadline
        # The tries made after the first, so far.
        self.retries = 0
        # The next pause (its upper bound, with jitter).
        self.step = backoff.first

    async def wait(self) -> bool:
        """Sleep the next pause and return True; or return False at once when no try is left
        (the retries are spent, or the pause would end past the deadline)."""
        backoff = self._backoff
        if backoff.retries is not None and self.retries >= backoff.retries:
            return False
        pause = random.uniform(0, self.step) if backoff.jitter else self.step
        loop = asyncio.get_running_loop()
        if self._deadline is not None and loop.time() + pause >= self._deadline:
            return False
        self.retries += 1
        self.step = min(self.step * 2, backoff.most)
        await asyncio.sleep(pause)
        return True
