"""The program run under the mocks once per stack file, for every unit test module that asks."""

from __future__ import annotations

import pytest

from harness.program import ProgramRun, run_program
from tools.render import stacks


@pytest.fixture(scope="module", params=stacks())
def stack_run(request: pytest.FixtureRequest) -> ProgramRun:
    return run_program(request.param)
