"""The program runner the unit, policy and ops suites share (harness/program.py)."""

from __future__ import annotations

import asyncio

from harness.program import run_program


def test_the_program_runs_after_asyncio_run_left_no_event_loop() -> None:
    """`pytest` at the root runs the services' tests, which call asyncio.run, in the same process
    as the program's: asyncio.run leaves the thread without an event loop, and Pulumi's mocks
    need one."""

    async def nothing() -> None:
        return None

    asyncio.run(nothing())
    run = run_program("dev")
    assert run.resources
