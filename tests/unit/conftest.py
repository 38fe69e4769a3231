"""The program run under the mocks once per stack file, for every unit test module that asks."""

from __future__ import annotations

import pytest

from components.stack_file import stacks
from harness.program import ProgramRun, run_program


@pytest.fixture(scope="module", params=stacks())
def stack_run(request: pytest.FixtureRequest) -> ProgramRun:
    return run_program(request.param)
