"""Waiting for a condition until a deadline: the one polling loop of the tests, the e2e machinery
and the operations tools.

A plain loop rather than a retry library: every caller polls a cheap check at a fixed interval,
and the timeouts the e2e suite and the tools were tuned with stay exactly what they were.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path

# How much of a daemon's log a timeout shows: its last lines, usually the reason.
LOG_TAIL_CHARACTERS = 3000


def poll(condition: Callable[[], bool], timeout: float, *, interval: float = 0.1) -> bool:
    """Check `condition` every `interval` seconds until it holds (True) or `timeout` seconds have
    passed (False). It is checked at least once, and once at or after the deadline, so a
    condition that holds by then is never reported as a timeout."""
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            return False
        time.sleep(interval)
    return True


def wait_until(
    ready: Callable[[], bool],
    what: str,
    timeout: float,
    log: Path | None = None,
    *,
    interval: float = 0.1,
) -> None:
    """Poll `ready` every `interval` seconds until it holds; past `timeout`, a RuntimeError
    naming `what`, with the end of `log` (the daemon's) when there is one."""
    if poll(ready, timeout, interval=interval):
        return
    message = f"{what} not ready after {timeout:.0f} s"
    if log is not None:
        tail = "(no log)"
        if log.exists():
            tail = log.read_text(errors="replace")[-LOG_TAIL_CHARACTERS:]
        message += f"; {log}:\n{tail}"
    raise RuntimeError(message)
