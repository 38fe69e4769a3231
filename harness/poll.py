"""Waiting for a condition until a deadline: the one polling loop of the tests, the e2e machinery
and the operations tools (and `eventually_async`, the same for a check that awaits, inside an
event loop); and the end of a log (`log_tail`), which a failed wait shows.

A plain loop rather than a retry library: every caller polls a cheap check at a fixed interval,
and the timeouts the e2e suite and the tools were tuned with stay exactly what they were.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

# How much of a daemon's log a timeout shows: its last lines, usually the reason.
LOG_TAIL_CHARACTERS = 3000


def poll(condition: Callable[[], object], timeout: float, *, interval: float = 0.1) -> bool:
    """Check `condition` every `interval` seconds until it holds (True) or `timeout` seconds have
    passed (False). It is checked at least once, and the last check starts at or after the
    deadline, however long each check takes, so a condition that holds by then is never
    reported as a timeout."""
    deadline = time.monotonic() + timeout
    while True:
        started = time.monotonic()
        if condition():
            return True
        if started >= deadline:
            return False
        time.sleep(interval)


def wait_until(
    ready: Callable[[], object],
    what: str,
    timeout: float,
    log: Path | None = None,
    *,
    interval: float = 0.1,
    exited: Callable[[], str | None] | None = None,
) -> float:
    """Poll `ready` every `interval` seconds until it holds; the seconds that took. Past
    `timeout`, a RuntimeError naming `what`, with the end of `log` (the daemon's) when there is
    one. `exited`, when given, is asked before each check how the process behind `ready` ended
    (e.g. "gateway exited with 1"; None while it runs): once it has, the error comes at once."""
    return _wait(
        ready, what, timeout, log=log, interval=interval, exited=exited, error=RuntimeError
    )


def eventually(
    ready: Callable[[], object], what: str, timeout: float, *, interval: float = 0.1
) -> float:
    """`wait_until` for what a test expects: past `timeout`, an AssertionError, the test's
    failure rather than its harness's."""
    return _wait(ready, what, timeout, interval=interval, error=AssertionError)


def _wait(
    ready: Callable[[], object],
    what: str,
    timeout: float,
    *,
    log: Path | None = None,
    interval: float,
    exited: Callable[[], str | None] | None = None,
    error: type[Exception],
) -> float:
    start = time.monotonic()
    ended: str | None = None

    def done() -> bool:
        nonlocal ended
        # Asked first: a process that answered and then exited was ready.
        ended = exited() if exited is not None else None
        return ended is not None or bool(ready())

    if poll(done, timeout, interval=interval) and ended is None:
        return time.monotonic() - start
    if ended is not None:
        message = f"{ended} before {what}"
    else:
        message = f"timed out after {timeout:g} s waiting for {what}"
    if log is not None:
        message += f"; {log}:\n{log_tail(log)}"
    raise error(message)


async def eventually_async(
    ready: Callable[[], Awaitable[object]], what: str, timeout: float, *, interval: float = 0.01
) -> float:
    """`eventually` inside an event loop, for a check that awaits (a store tested in-process,
    whose own tasks run while this one sleeps): awaited every `interval` seconds until it
    holds; the seconds that took. As with `poll`, it is checked at least once, and the last
    check starts at or after the deadline."""
    start = time.monotonic()
    while True:
        started = time.monotonic()
        if await ready():
            return time.monotonic() - start
        if started >= start + timeout:
            raise AssertionError(f"timed out after {timeout:g} s waiting for {what}")
        await asyncio.sleep(interval)


def log_tail(log: Path) -> str:
    """The end of a log file (its last LOG_TAIL_CHARACTERS), or "(no log)" when there is none."""
    try:
        return log.read_text(errors="replace")[-LOG_TAIL_CHARACTERS:]
    except FileNotFoundError:
        return "(no log)"
