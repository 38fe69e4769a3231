"""Local server processes for the tests, the benchmarks and `make serve`: started with their
output in a log file (or on the terminal), waited for until they answer, stopped with SIGTERM
(SIGKILL when they linger), with the whole process group when they have a session of their own.

e2e/process.py keeps the e2e suite's own daemons, which outlive the command that starts them;
these live as long as the test that starts them.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Self

from harness.http import answers
from harness.poll import log_tail, poll, wait_until

# How long a server gets to drain and exit on SIGTERM before it is killed.
STOP_GRACE_SECONDS = 25


def group_alive(pgid: int) -> bool:
    """Whether any process of process group `pgid` is left (one exited but not yet reaped
    included)."""
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    return True


def pids() -> Iterator[int]:
    """Every process on the machine, by pid (from /proc)."""
    return (int(entry.name) for entry in Path("/proc").iterdir() if entry.name.isdigit())


def stat_fields(pid: int) -> list[str] | None:
    """The fields of /proc/<pid>/stat after the command name (state first, then the parent's
    pid); None when there is no such process."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return None


def exists(pid: int) -> bool:
    """Whether there is a process `pid`, one exited but not yet reaped by its parent (a zombie)
    included: a PostgreSQL about to start in the data folder of one takes it for running."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's
        pass
    return True


def alive(pid: int) -> bool:
    """Whether process `pid` runs: a zombie (exited, not yet reaped by its parent) is gone."""
    if not exists(pid):
        return False
    # Its state is read from /proc/<pid>/stat, not inferred from an empty command line: a
    # process in the middle of execve shows an empty one too.
    fields = stat_fields(pid)
    return fields is not None and fields[0] != "Z"


def children(pid: int) -> list[int]:
    """The processes whose parent is `pid`."""
    return [child for child in pids() if (fields := stat_fields(child)) and fields[1] == str(pid)]


class LocalProcess:
    """One process named `name`, its stdout and stderr appended to `log_path`; without one,
    written where this process's go (a terminal's)."""

    def __init__(
        self,
        name: str,
        argv: Sequence[str],
        log_path: Path | None,
        *,
        env: Mapping[str, str] | None = None,
        cwd: Path | None = None,
        new_session: bool = False,
    ) -> None:
        self.name = name
        self.argv = list(argv)
        self._log_path = log_path
        # The whole environment the process gets: this one's when none is given.
        self.env = dict(os.environ if env is None else env)
        self.cwd = cwd
        # A session (and process group) of its own: a terminal's foreground job, or a server
        # whose children must be signalled with it.
        self.new_session = new_session
        self.process: subprocess.Popen[bytes] | None = None

    def start(self) -> Self:
        with contextlib.ExitStack() as stack:
            log = None if self._log_path is None else stack.enter_context(self._log_path.open("ab"))
            self.process = subprocess.Popen(
                self.argv,
                env=self.env,
                cwd=self.cwd,
                stdout=log,
                stderr=None if log is None else subprocess.STDOUT,
                start_new_session=self.new_session,
            )
        return self

    @property
    def log_path(self) -> Path:
        assert self._log_path is not None, f"{self.name} writes to this process's output"
        return self._log_path

    @property
    def pid(self) -> int:
        assert self.process is not None, f"{self.name} was never started"
        return self.process.pid

    def log_tail(self) -> str:
        return "(no log)" if self._log_path is None else log_tail(self._log_path)

    def wait_for(
        self, what: str, check: Callable[[], bool], timeout: float = 60.0, interval: float = 0.05
    ) -> None:
        """Poll `check` until it holds; a RuntimeError with the log if the process exits first
        or `timeout` seconds pass."""
        process = self.process
        assert process is not None, f"{self.name} was never started"

        def exited() -> str | None:
            if process.poll() is None:
                return None
            return f"{self.name} exited with {process.returncode}"

        wait_until(
            check, f"{self.name} {what}", timeout, self._log_path, interval=interval, exited=exited
        )

    def wait_for_url(self, url: str, timeout: float = 60.0, status: int = 200) -> None:
        """Wait until a GET of `url` answers `status`."""
        self.wait_for(f"answering {url}", lambda: answers(url, status), timeout)

    def signal(self, signum: int) -> None:
        assert self.process is not None
        self.process.send_signal(signum)

    def wait(self, timeout: float = 30.0) -> int:
        assert self.process is not None
        return self.process.wait(timeout=timeout)

    def wait_for_exit(self, timeout: float = 30.0) -> int:
        """Its exit status, once it exits by itself (on a refused setting, say, or a signal
        sent); when it has not within `timeout` seconds, it is stopped, not left running past
        the test, and a RuntimeError with its log is raised."""
        try:
            return self.wait(timeout)
        except subprocess.TimeoutExpired:
            self.stop()
            raise RuntimeError(
                f"{self.name} did not exit within {timeout} s:\n{self.log_tail()}"
            ) from None

    def stop(self) -> None:
        """SIGTERM, then SIGKILL after STOP_GRACE_SECONDS; nothing when it has exited. With a
        session of its own, to its whole process group, until none of the group is left: the
        children it started go with it, even those that outlive it."""
        process = self.process
        if process is None:
            return
        if self.new_session:
            self._stop_group(process)
            return
        if process.poll() is not None:
            return
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout=STOP_GRACE_SECONDS)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()

    @staticmethod
    def _stop_group(process: subprocess.Popen[bytes]) -> None:
        # The session's id is the process's own, and its group's: it called setsid().
        pgid = process.pid

        def all_exited() -> bool:
            # poll() reaps the leader: until then, its group counts it as alive.
            return process.poll() is not None and not group_alive(pgid)

        with contextlib.suppress(ProcessLookupError):
            os.killpg(pgid, signal.SIGTERM)
            if not poll(all_exited, STOP_GRACE_SECONDS, interval=0.05):
                os.killpg(pgid, signal.SIGKILL)
        process.wait()

    def kill(self) -> None:
        assert self.process is not None
        self.process.kill()
        self.process.wait()


class LocalServer(LocalProcess):
    """A LocalProcess serving HTTP at `url`, ready once a GET of `ready_path` there answers 200;
    with its gRPC target and the URL of its /metrics when it has them."""

    def __init__(
        self,
        name: str,
        argv: Sequence[str],
        log_path: Path | None,
        url: str,
        *,
        ready_path: str = "/",
        env: Mapping[str, str] | None = None,
        cwd: Path | None = None,
        new_session: bool = False,
        grpc_target: str | None = None,
    ) -> None:
        super().__init__(name, argv, log_path, env=env, cwd=cwd, new_session=new_session)
        self.url = url
        self.ready_path = ready_path
        # host:port of its gRPC side, if it has one.
        self.grpc_target = grpc_target
        # Where it serves /metrics, when on a port of its own.
        self.metrics_url: str | None = None

    def ready(self) -> bool:
        """Whether it answers as ready now."""
        return answers(self.url + self.ready_path)

    def wait_ready(self, timeout: float = 60.0) -> Self:
        """Wait until it is ready; a RuntimeError with its log if it exits first or `timeout`
        seconds pass."""
        self.wait_for("ready", self.ready, timeout)
        return self
