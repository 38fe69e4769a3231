"""A circuit breaker, so that a dead model costs callers a fast 503 instead of a wait.

closed: calls go through; ``failure_threshold`` consecutive failures open it.
open: calls are refused at once until ``reset_seconds`` have passed.
half-open: one trial call goes through; its success closes the breaker, its failure re-opens it.
"""

from __future__ import annotations

import enum
import math
import time
from collections.abc import Callable


class BreakerState(enum.Enum):
    CLOSED = "closed"
    OPEN = "open"
    HALF_OPEN = "half_open"


class CircuitBreaker:
    def __init__(
        self,
        failure_threshold: int,
        reset_seconds: float,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._threshold = failure_threshold
        self._reset_seconds = reset_seconds
        self._clock = clock
        self._state = BreakerState.CLOSED
        self._failures = 0
        self._opened_at = 0.0
        self._trial_in_flight = False

    @property
    def state(self) -> BreakerState:
        return self._state

    def allow(self) -> bool:
        """Whether a call may go out now; a True in half-open state is the one trial."""
        if self._state is BreakerState.CLOSED:
            return True
        if self._state is BreakerState.OPEN:
            if self._clock() - self._opened_at < self._reset_seconds:
                return False
            self._state = BreakerState.HALF_OPEN
            self._trial_in_flight = False
        if self._trial_in_flight:
            return False
        self._trial_in_flight = True
        return True

    def record_success(self) -> None:
        self._failures = 0
        self._trial_in_flight = False
        self._state = BreakerState.CLOSED

    def record_failure(self) -> None:
        self._failures += 1
        self._trial_in_flight = False
        if self._state is BreakerState.HALF_OPEN or self._failures >= self._threshold:
            self._state = BreakerState.OPEN
            self._opened_at = self._clock()

    def release(self) -> None:
        """A call ended with neither verdict (e.g. cancelled): let another trial go."""
        self._trial_in_flight = False

    def retry_after_seconds(self) -> int:
        """Whole seconds until the breaker lets a trial call through, at least 1 (what a refused
        caller is told in Retry-After; half-open, the trial's verdict is due within a call)."""
        if self._state is not BreakerState.OPEN:
            return 1
        left = self._reset_seconds - (self._clock() - self._opened_at)
        return max(1, math.ceil(left))
