"""Commands, processes and mounts of the suite: a command run to its end (`run`); the suite's own
daemons started detached (they outlive the command that started them, so `up` and `down` may be
two commands), found again by their pid files (`Daemon`) or in /proc, and stopped only when their
command line still names what the suite gave them; the mounts they leave."""

from __future__ import annotations

import contextlib
import os
import re
import signal
import subprocess
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Final, NamedTuple

from harness.poll import poll, wait_until
from harness.processes import alive, pids, stat_fields


def run(
    *argv: str,
    check: bool = True,
    stdin: str | None = None,
    timeout: float = 120,
    env: Mapping[str, str] | None = None,
) -> subprocess.CompletedProcess[str]:
    """Run `argv` to its end, its output captured as text. When it fails and `check` holds, a
    RuntimeError names the command line, the exit status and the output."""
    proc = subprocess.run(
        list(argv),
        input=stdin,
        capture_output=True,
        text=True,
        errors="replace",
        env=env,
        check=False,
        timeout=timeout,
    )
    if check and proc.returncode != 0:
        raise RuntimeError(
            f"{' '.join(argv)} failed ({proc.returncode}):\n{proc.stdout}{proc.stderr}"
        )
    return proc


BOOT_ID: Final = Path("/proc/sys/kernel/random/boot_id")


def identity(pid: int) -> str | None:
    """What tells process `pid` from any other, a later one given the same pid included: the
    boot it runs in, its pid and its start time (clock ticks after that boot, field 22 of
    /proc/<pid>/stat, set when it was forked). None when there is no such process."""
    fields = stat_fields(pid)
    if fields is None or len(fields) < 20:
        return None
    return f"{BOOT_ID.read_text().strip()} {pid} {fields[19]}"


def cmdline(pid: int) -> list[str]:
    try:
        raw = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return []
    return [part.decode(errors="replace") for part in raw.split(b"\0") if part]


def read_pid(path: Path) -> int | None:
    try:
        return int(path.read_text().strip())
    except (OSError, ValueError):
        return None


def owned(pid: int, marker: str) -> bool:
    """Whether `pid` still runs a command whose arguments mention `marker` (a path of ours): a
    recycled pid of some other program is never signalled."""
    return any(marker in arg for arg in cmdline(pid))


def find(marker: str) -> list[int]:
    """Every running process (but this one) whose command line mentions `marker`."""
    return sorted(pid for pid in pids() if pid != os.getpid() and owned(pid, marker))


def running(comm: str) -> bool:
    """Whether a process whose command name (/proc/<pid>/comm) is `comm` runs on the machine."""
    for pid in pids():
        with contextlib.suppress(OSError):
            if Path(f"/proc/{pid}/comm").read_text().strip() == comm:
                return True
    return False


def spawn(
    argv: Sequence[str], log: Path, env: dict[str, str] | None = None
) -> subprocess.Popen[bytes]:
    """Start `argv` in a session of its own (a Ctrl-C in the terminal does not reach it), its
    output appended to `log`."""
    log.parent.mkdir(parents=True, exist_ok=True)
    with log.open("ab") as out:
        return subprocess.Popen(
            list(argv),
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
            env=env,
            start_new_session=True,
        )


def stop(pid: int | None, marker: str, *, timeout: float = 30) -> None:
    """SIGTERM, then SIGKILL after `timeout` seconds; nothing when `pid` is not ours any more."""
    if pid is None or not alive(pid) or not owned(pid, marker):
        return
    stop_all([pid], timeout)


def stop_all(pids: Sequence[int], grace: float = 10) -> None:
    """SIGTERM every pid still running, then SIGKILL what is left after `grace` seconds; our own
    children are reaped. For processes whose pids the suite recorded itself (no marker check)."""
    for pid in pids:
        if alive(pid):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGTERM)
    # Every pid is reaped on each round (a list, not a short-circuiting generator).
    if poll(lambda: all([_gone(pid) for pid in pids]), grace, interval=0.1):
        return
    for pid in pids:
        if alive(pid):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
    poll(lambda: all([_gone(pid) for pid in pids]), 5, interval=0.05)


def _gone(pid: int) -> bool:
    """Whether `pid` has exited, reaping it first when it is our own child."""
    _reap(pid)
    return not alive(pid)


def _reap(pid: int) -> None:
    """Collect the exit status when the process is our own child (else it stays a zombie)."""
    with contextlib.suppress(ChildProcessError, OSError):
        os.waitpid(pid, os.WNOHANG)


@dataclass(frozen=True)
class Daemon:
    """One of the suite's own daemons, known by its files: `pidfile`, where `start` records its
    pid, and `log`, where its output goes; and by `marker`, a path of ours that its command line
    names, which tells that the recorded pid still runs it (a recycled pid is another program's,
    never signalled)."""

    pidfile: Path
    log: Path
    marker: str

    @classmethod
    def in_folder(cls, folder: Path, name: str, marker: str, log: Path | None = None) -> Daemon:
        """`<name>.pid` in `folder`, its log `<name>.log` beside it unless `log` is given."""
        return cls(folder / f"{name}.pid", log or folder / f"{name}.log", marker)

    def pid(self) -> int | None:
        """The recorded pid while it runs and is still ours; None otherwise."""
        pid = read_pid(self.pidfile)
        return pid if pid is not None and alive(pid) and owned(pid, self.marker) else None

    def running(self) -> bool:
        return self.pid() is not None

    def start(
        self,
        argv: Sequence[str],
        ready: Callable[[], object],
        what: str,
        timeout: float,
        env: dict[str, str] | None = None,
    ) -> None:
        """`spawn` `argv`, its pid written to `pidfile`, then wait until `ready` holds: past
        `timeout` seconds, `wait_until`'s RuntimeError naming `what`, with the end of the log.
        A daemon that does not come up is left running: stopping it is its owner's call."""
        proc = spawn(argv, self.log, env)
        self.pidfile.write_text(f"{proc.pid}\n")
        wait_until(ready, what, timeout, self.log)

    def stop(self, *, timeout: float = 30) -> None:
        """`stop` the recorded pid: SIGTERM, then SIGKILL after `timeout` seconds; nothing when
        it no longer runs as ours."""
        stop(read_pid(self.pidfile), self.marker, timeout=timeout)


MOUNTINFO: Final = Path("/proc/self/mountinfo")


class Mount(NamedTuple):
    point: Path
    fstype: str


def mounts(mountinfo: Path = MOUNTINFO) -> list[Mount]:
    """The mounts `mountinfo` lists (this process's view of the machine's): for each, its mount
    point (field 5, spaces and the like octal-escaped as `\\040`, decoded) and its file system
    type (the first field after the `-` that ends the optional fields)."""
    found = []
    for line in mountinfo.read_text(errors="surrogateescape").splitlines():
        fields = line.split()
        point = re.sub(r"\\([0-7]{3})", lambda m: chr(int(m[1], 8)), fields[4])
        found.append(Mount(Path(point), fields[fields.index("-", 6) + 1]))
    return found


def mounts_under(folder: Path) -> list[Path]:
    """Mount points at or below `folder`, deepest first."""
    prefix = str(folder.resolve())
    found = [
        mount.point
        for mount in mounts()
        if str(mount.point) == prefix or str(mount.point).startswith(prefix + "/")
    ]
    return sorted(found, key=lambda p: len(p.parts), reverse=True)


def unmount_under(folder: Path) -> None:
    """Unmount everything at or below `folder`, lazily where a plain unmount fails."""
    for point in mounts_under(folder):
        if run("umount", str(point), check=False).returncode != 0:
            run("umount", "--lazy", str(point), check=False)
