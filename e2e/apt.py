"""Debian packages installed on the machine with apt-get: the project's one installer of them (for
e2e's parts, `.ci/run`, `make bench` and the GitHub workflow) and the one reader of its package
lists (e2e/*-packages.txt). Standard library only: it runs with the system's python3 before any
virtual environment exists.

    python3 -m e2e.apt install-missing [--sudo] LIST_OR_PACKAGE...

installs, of the packages named, those dpkg does not have installed (`install` instead of
`install-missing`: all of them). An argument with a `/` is a list file, any other a package. Only
root can install; with --sudo, anyone else runs this module again as root through sudo (asked only
when a package is missing).

No service of the packages is left running or enabled: the project runs its own dockerd,
containerd, registry and PostgreSQL, and Debian's would otherwise start at once and at every boot
(the registry's default serves :5000 on every interface, unauthenticated). While apt-get installs,
POLICY_RC_D forbids maintainer scripts to start any service: the administrator's if there is one,
used as it is, else ours, written for the install and removed after it however it ends. Then, where
systemd runs, the units of the packages this install brought (never of those already there) are
disabled and stopped, and one line on stderr names them and how to enable one.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Final

# Seconds apt-get waits for another apt or dpkg (an unattended upgrade) to release its lock.
LOCK_TIMEOUT: Final = 300
USAGE: Final = "usage: python3 -m e2e.apt install-missing|install [--sudo] LIST_OR_PACKAGE..."
# Where `python3 -m e2e.apt` finds this module when it runs again as root under sudo.
PROJECT_ROOT: Final = Path(__file__).resolve().parents[1]
# Debian's service policy: invoke-rc.d and deb-systemd-invoke, which maintainer scripts start
# services with, run it first and start nothing when it exits 101 ("action forbidden").
POLICY_RC_D: Final = Path("/usr/sbin/policy-rc.d")
POLICY: Final = "#!/bin/sh\n# e2e/apt.py's while apt-get installs: no service starts.\nexit 101\n"
# A directory only while systemd runs the machine (sd_booted(3)).
SYSTEMD_RUNNING: Final = Path("/run/systemd/system")
# A unit file as `dpkg -L` lists it. Not a template (name@.service): one runs only as an instance
# another unit starts (PostgreSQL's clusters through postgresql.service), and systemctl cannot
# stop a template.
UNIT_FILE: Final = re.compile(r"/(?:usr/)?lib/systemd/system/[^/@]+\.(?:service|socket|timer)")
# dpkg's states of a package not on the machine (config-files: removed, its configuration kept).
NO_FILES: Final = frozenset({"not-installed", "config-files"})


def listed(path: Path) -> list[str]:
    """The packages a list file names: one a line; `#` starts a comment, to the end of its line."""
    names = []
    for raw in path.read_text().splitlines():
        line = raw.split("#", 1)[0].strip()
        if line:
            names.append(line)
    return names


def missing(packages: Sequence[str]) -> list[str]:
    """Those of `packages` dpkg does not have installed."""
    return [
        name
        for name in packages
        if subprocess.run(
            ["dpkg-query", "-W", "-f=${Status}", name], capture_output=True, text=True, check=False
        ).stdout.strip()
        != "install ok installed"
    ]


def present() -> set[str]:
    """Every package whose files dpkg has on the machine (installed or partly)."""
    shown = subprocess.run(
        ["dpkg-query", "-W", "-f=${db:Status-Status} ${binary:Package}\n"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    return {
        name
        for status, _, name in (line.partition(" ") for line in shown.splitlines())
        if status not in NO_FILES
    }


def forbid_service_starts() -> bool:
    """Write POLICY_RC_D unless one is there (the administrator's policy, left to rule); whether
    it wrote it, for the caller to remove."""
    try:
        # O_EXCL: never over another's, nor through a link.
        policy = os.open(POLICY_RC_D, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o755)
    except FileExistsError:
        return False
    with os.fdopen(policy, "w") as file:
        file.write(POLICY)
        os.fchmod(file.fileno(), 0o755)  # whatever the umask
    return True


def disable_units(packages: Sequence[str]) -> None:
    """Disable and stop the systemd units `packages` ship, and say so in one line on stderr."""
    if not packages:
        return
    # Not checked: a package dpkg cannot list (a failed install's) leaves the others' lines.
    files = subprocess.run(
        ["dpkg", "-L", *packages], stdout=subprocess.PIPE, text=True, check=False
    ).stdout
    units = list(dict.fromkeys(Path(f).name for f in files.splitlines() if UNIT_FILE.fullmatch(f)))
    if not units:
        return
    subprocess.run(["systemctl", "disable", "--now", *units], check=True, stdout=sys.stderr)
    print(
        f"e2e.apt: left disabled and stopped: {' '.join(units)} "
        "(to run one now and at boot: systemctl enable --now UNIT)",
        file=sys.stderr,
    )


def install(packages: Sequence[str], *, sudo: bool = False) -> None:
    """`apt-get update`, then `packages` installed without their recommendations and without
    starting their services, and where systemd runs the units of the packages it brought disabled
    and stopped: as root, or when `sudo` is set this module again, through sudo."""
    if os.geteuid() != 0:
        if not sudo:
            raise RuntimeError(
                f"missing Debian packages {', '.join(packages)}: "
                f"apt-get install {' '.join(packages)} (as root)"
            )
        # All of it as root, in one process: one password prompt, and the policy file removed by
        # the process that wrote it, however the install ends. -B: root writes no bytecode into
        # the project.
        subprocess.run(
            ["sudo", sys.executable, "-B", "-m", "e2e.apt", "install", *packages],
            cwd=PROJECT_ROOT,
            check=True,
            stdout=sys.stderr,
        )
        return
    env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
    apt_get = ["apt-get", "-o", f"DPkg::Lock::Timeout={LOCK_TIMEOUT}"]
    # Its progress on stderr: a command's stdout is what it answers (the node's timings, say).
    subprocess.run([*apt_get, "update", "-q"], check=True, env=env, stdout=sys.stderr)
    before = present() if SYSTEMD_RUNNING.is_dir() else None
    wrote_policy = forbid_service_starts()
    try:
        subprocess.run(
            [*apt_get, "install", "-yq", "--no-install-recommends", *packages],
            check=True,
            env=env,
            stdout=sys.stderr,
        )
    finally:
        if wrote_policy:
            POLICY_RC_D.unlink(missing_ok=True)
        # Also after a failed install: what it did bring is enabled, and would start at boot.
        if before is not None:
            disable_units(sorted(present() - before))


def install_missing(packages: Sequence[str], *, sudo: bool = False) -> None:
    """Install those of `packages` that are missing (install's `sudo`)."""
    absent = missing(packages)
    if absent:
        print(f"installing {' '.join(absent)} from Debian", file=sys.stderr)
        install(absent, sudo=sudo)


def main(argv: Sequence[str]) -> int:
    command = {"install-missing": install_missing, "install": install}.get(argv[0] if argv else "")
    args = list(argv[1:])
    sudo = "--sudo" in args
    names = [a for a in args if a != "--sudo"]
    if command is None or not names:
        print(USAGE, file=sys.stderr)
        return 2
    packages = [p for name in names for p in (listed(Path(name)) if "/" in name else [name])]
    try:
        command(packages, sudo=sudo)
    except (RuntimeError, subprocess.CalledProcessError) as error:
        print(f"e2e.apt: {error}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
