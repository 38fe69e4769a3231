"""`make` as a user runs it, for the tests of the Makefile's targets: from the repository root,
in the caller's environment without what an outer make (`make test`) hands its commands."""

from __future__ import annotations

import os
import subprocess
from collections.abc import Mapping
from typing import Final

from harness.program import ROOT

# What an outer make passes on to the commands it runs: an inner make would take its flags.
OUTER_MAKE: Final = ("MAKEFLAGS", "MFLAGS", "MAKELEVEL")


def make_command(*arguments: str) -> list[str]:
    """`make *arguments`, without its "Entering directory" lines."""
    # -o: never reinstall the shared virtual environment from inside the tests.
    return ["make", "--no-print-directory", "-o", ".venv/.installed", *arguments]


def make_env(*unset: str) -> dict[str, str]:
    """This process's environment without an outer make's variables, nor those named in
    `unset` (what the test must not inherit from whoever runs it)."""
    dropped = {*OUTER_MAKE, *unset}
    return {name: value for name, value in os.environ.items() if name not in dropped}


def run_make(
    *arguments: str, env: Mapping[str, str], timeout: float = 120
) -> subprocess.CompletedProcess[str]:
    """Run `make *arguments` from the repository root in `env` (make_env's, with what the test
    sets), its output captured as text; its status is returned, not raised."""
    return subprocess.run(
        make_command(*arguments),
        cwd=ROOT,
        env=dict(env),
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )
