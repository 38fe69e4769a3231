"""CI's script (.ci/run) run for real in a copy of its folder, on stand-ins: `python3` (its
e2e.apt), `make` and a toolchain build.sh that starts a child and waits, as a go build would."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Final

import pytest

from harness.poll import eventually
from harness.processes import alive
from harness.program import ROOT
from tests.stand_ins import stand_in

# The toolchain build: a child that runs until it is stopped, both pids noted, then word to the
# stand-in make (a FIFO) that the build runs.
BUILD: Final = """#!/usr/bin/env bash
sleep 300 &
echo "$$ $!" >"$CI_STATE/build.pids"
echo started >"$CI_STATE/started"
wait
"""
# `make test` fails, once the toolchain build has started.
FAILING_MAKE: Final = """#!/bin/sh
read -r _ <"$CI_STATE/started"
exit 2
"""
# `make test` runs on, once the toolchain build has started, until a Ctrl-C.
RUNNING_MAKE: Final = """#!/bin/sh
read -r _ <"$CI_STATE/started"
echo $$ >"$CI_STATE/make.pid"
sed -n 's/^SigIgn:[[:space:]]*//p' /proc/$$/status >"$CI_STATE/make.ignored"
echo testing >"$CI_STATE/in-make"
exec sleep 300
"""


@pytest.fixture
def ci(tmp_path: Path) -> Iterator[Path]:
    """A copy of .ci/run in tmp_path/repo, with the stand-ins; the build's pids killed after."""
    repo = tmp_path / "repo"
    (repo / ".ci").mkdir(parents=True)
    shutil.copy(ROOT / ".ci" / "run", repo / ".ci" / "run")
    stand_in(repo / "e2e" / "toolchain", "build.sh", BUILD)
    folder = tmp_path / "bin"
    stand_in(folder, "python3", "#!/bin/sh\nexit 0\n")
    stand_in(folder, "make", FAILING_MAKE)
    stand_in(folder, "go", "#!/bin/sh\necho go1.26.8\n")
    os.mkfifo(tmp_path / "started")
    yield repo
    pids = tmp_path / "build.pids"
    for pid in pids.read_text().split() if pids.exists() else []:
        if alive(int(pid)):
            os.kill(int(pid), signal.SIGKILL)


def ci_env(repo: Path) -> dict[str, str]:
    state = repo.parent
    # TMPDIR: the script's toolchain log goes with the test's folder, even where a test kills it.
    return {
        "PATH": f"{state / 'bin'}:/usr/bin:/bin",
        "HOME": str(state),
        "CI_STATE": str(state),
        "TMPDIR": str(state),
    }


def run_ci(repo: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["bash", str(repo / ".ci" / "run")], env=ci_env(repo),
        capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip


def build_pids(repo: Path) -> list[int]:
    return [int(pid) for pid in (repo.parent / "build.pids").read_text().split()]


def test_a_failing_make_test_stops_the_toolchain_build(ci: Path) -> None:
    """set -e ends the script; the build, its go builds with it, must not run on (holding
    build.sh's lock on the cache, or racing a rerun in the same tool folders)."""
    done = run_ci(ci)

    assert done.returncode == 2, done.stdout + done.stderr
    pids = build_pids(ci)
    eventually(lambda: not any(alive(pid) for pid in pids), "the build and its child gone", 10)


@pytest.mark.parametrize(
    ("signum", "status", "to_group"),
    [
        # The terminal's Ctrl-C reaches the script's process group; the build, an asynchronous
        # command of a non-interactive shell, would ignore it.
        (signal.SIGINT, 130, True),
        # CI's stop: to the script alone, which would otherwise run its trap only once the
        # running make had ended, the rest of the suite later.
        (signal.SIGTERM, 143, False),
    ],
    ids=["ctrl-c", "sigterm"],
)
def test_a_signal_during_make_test_stops_make_and_the_toolchain_build(
    ci: Path, signum: signal.Signals, status: int, to_group: bool
) -> None:
    stand_in(ci.parent / "bin", "make", RUNNING_MAKE)
    # Started as from a terminal, SIGINT's default action its own (a test run in the background of
    # a shell inherits SIGINT ignored, which bash would not let the script trap).
    with subprocess.Popen(
        ["env", "--default-signal=INT,QUIT", "bash", str(ci / ".ci" / "run")], env=ci_env(ci),
        start_new_session=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    ) as script:  # fmt: skip
        try:
            eventually((ci.parent / "in-make").exists, "make test to run", 30)
            (os.killpg if to_group else os.kill)(script.pid, signum)
            assert script.wait(timeout=30) == status
        finally:
            if script.poll() is None:
                os.killpg(script.pid, signal.SIGKILL)
    # make, and all it runs, take SIGINT as a process started in a terminal's foreground does.
    ignored = int((ci.parent / "make.ignored").read_text(), 16)
    assert not ignored & (1 << (signal.SIGINT - 1)), hex(ignored)
    pids = [*build_pids(ci), int((ci.parent / "make.pid").read_text())]
    eventually(lambda: not any(alive(pid) for pid in pids), "make and the build gone", 10)


# The stand-in python3 (e2e.apt, the script's first step) notes the PATH it was given, and stops
# the script there.
NOTING_PYTHON: Final = """#!/bin/sh
echo "$PATH" >"$CI_STATE/apt-path"
exit 3
"""


@pytest.mark.skipif(
    not os.access("/usr/local/go/bin/go", os.X_OK), reason="no Go in /usr/local/go on this machine"
)
def test_without_go_on_path_ci_takes_the_one_in_usr_local_go(ci: Path) -> None:
    """As CI starts without a login shell's ~/.bashrc, which puts it on PATH."""
    bin_dir = ci.parent / "bin"
    (bin_dir / "go").unlink()
    stand_in(bin_dir, "python3", NOTING_PYTHON)

    done = run_ci(ci)

    assert done.returncode == 3, done.stderr
    assert (ci.parent / "apt-path").read_text().split(":")[0] == "/usr/local/go/bin"
