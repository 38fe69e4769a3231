"""The e2e session and its signals (tests/e2e/conftest.py): a SIGTERM ends the session as a
Ctrl-C does, after the running test has unwound, and the session's teardown runs once and whole,
a SIGTERM during it held back. A pytest session of its own on made-up scenarios, with the
suite's conftest as a plugin: no cluster, no node."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from typing import Final

from harness.program import ROOT

# Two scenarios: the first gets a SIGTERM while its load runs, and has pushed a part's teardown
# that gets another SIGTERM while it runs.
SCENARIOS: Final = """
import os
import signal
import time
from pathlib import Path

from tests.e2e import conftest

LOG = Path(os.environ["SESSION_LOG"])


def note(what: str) -> None:
    with LOG.open("a") as log:
        log.write(what + "\\n")


def part_down() -> None:
    note("teardown begins")
    os.kill(os.getpid(), signal.SIGTERM)
    time.sleep(0.5)
    note("teardown ends")


def test_a_scenario_under_load() -> None:
    conftest.TEARDOWN.callback(part_down)
    note("load starts")
    try:
        os.kill(os.getpid(), signal.SIGTERM)
        time.sleep(5)
        note("load goes on after the SIGTERM")
    finally:
        note("load stops")


def test_the_next_scenario() -> None:
    note("the next scenario runs")
"""


def test_a_sigterm_ends_the_session_and_its_teardown_runs_once_whole(tmp_path: Path) -> None:
    (tmp_path / "test_scenarios.py").write_text(SCENARIOS)
    (tmp_path / "pytest.ini").write_text("[pytest]\n")
    log = tmp_path / "session.log"
    done = subprocess.run(
        [
            sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider",
            "-p", "tests.e2e.conftest", "-c", str(tmp_path / "pytest.ini"),
            "--rootdir", str(tmp_path), str(tmp_path / "test_scenarios.py"),
        ],
        cwd=ROOT, env={"PATH": "/usr/bin:/bin", "PYTHONPATH": str(ROOT),
                       "SESSION_LOG": str(log)},
        capture_output=True, text=True, timeout=120, check=False,
    )  # fmt: skip
    # The load stops before the teardown begins (nothing is sent while the node's routes go),
    # the teardown is not cut short by the second SIGTERM, and no scenario runs after.
    assert log.read_text().splitlines() == [
        "load starts",
        "load stops",
        "teardown begins",
        "teardown ends",
    ], done.stdout + done.stderr
    assert done.returncode == 2, done.stdout + done.stderr  # pytest's "interrupted"
