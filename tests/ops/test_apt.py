"""e2e/apt.py, the one installer of Debian packages: run against stand-in `dpkg-query`, `dpkg`,
`apt-get`, `systemctl` and `sudo` on a made-up machine (its packages, their files and
dependencies), with its policy file and its systemd marker redirected into the test's folder;
its command line with the interpreter's standard library only (it runs before any virtual
environment exists); and every caller held to it."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

import pytest

from e2e import apt, images
from e2e.node.packages import debian_packages
from tests.paths import ROOT
from tests.stand_ins import first_on_path, logged_calls, stand_in
from tests.unit.modules import module_files

# The stand-ins' files, beside them: each call they answer, the made-up machine (`machine`),
# and the packages installed on it, one a line, which apt-get adds to.
CALLS: Final = "calls.jsonl"
MACHINE: Final = "machine.json"
INSTALLED: Final = "installed.txt"
# What every stand-in starts with: the machine, its arguments, and `log`, which writes one call to
# CALLS: the command's name, its arguments, whether it runs under the stand-in sudo, and more.
HEADER: Final = """\
#!{python}
import json, os, subprocess, sys
from pathlib import Path

here = Path(__file__).parent
machine = json.loads((here / "{machine}").read_text())
installed_file = here / "{installed}"
installed = installed_file.read_text().split()
args = sys.argv[1:]


def log(**more):
    call = dict(command=Path(__file__).name, args=args, under_sudo="UNDER_SUDO" in os.environ)
    with (here / "{calls}").open("a") as calls:
        calls.write(json.dumps(dict(call, **more)) + "\\n")

"""
# apt-get: logged with its DEBIAN_FRONTEND and, for `install`, the policy file as it found it
# (whether it exists, what it answers to a service's start when it can run). `install` adds the
# packages named and their dependencies to INSTALLED, then fails if the machine says so.
APT_GET: Final = """\
policy = None
if "install" in args:
    path = Path(machine["policy_rc_d"])
    answer = subprocess.run([path, "docker.service", "start"]) if os.access(path, os.X_OK) else None
    policy = dict(exists=path.exists(), exit=answer and answer.returncode)
log(frontend=os.environ.get("DEBIAN_FRONTEND"), policy=policy)
if "install" in args:
    wanted = args[args.index("--no-install-recommends") + 1 :]
    while wanted:
        name = wanted.pop(0)
        if name not in installed:
            installed.append(name)
            wanted += machine["depends"].get(name, [])
    installed_file.write_text("\\n".join(installed))
    if machine["apt_get_fails"]:
        sys.exit("E: Sub-process /usr/bin/dpkg returned an error code (1)")
"""
# dpkg-query: a package's status, or every package dpkg knows with its state (those not
# installed in the state the machine gives them); nothing else.
DPKG_QUERY: Final = """\
log()
if args == ["-W", "-f=${db:Status-Status} ${binary:Package}\\n"]:
    for name, state in machine["states"].items():
        if name not in installed:
            print(state, name)
    for name in installed:
        print("installed", name)
elif len(args) == 3 and args[:2] == ["-W", "-f=${Status}"]:
    if args[2] not in installed:
        sys.exit(f"dpkg-query: no packages found matching {args[2]}")
    print("install ok installed", end="")
else:
    sys.exit(f"dpkg-query stand-in: unexpected {args}")
"""
# dpkg -L: each package's files as the machine gives them, an empty line between packages.
DPKG: Final = """\
log()
if args[:1] != ["-L"] or len(args) < 2:
    sys.exit(f"dpkg stand-in: unexpected {args}")
failed = False
for index, name in enumerate(args[1:]):
    if index:
        print()
    if name not in installed:
        print(f"dpkg-query: package '{name}' is not installed", file=sys.stderr)
        failed = True
    else:
        print("\\n".join(["/.", *machine["files"].get(name, [f"/usr/share/doc/{name}"])]))
sys.exit(1 if failed else 0)
"""
SYSTEMCTL: Final = "log()\n"
# sudo: logged with the folder it runs in; it runs e2e.apt alone (else it refuses), and as root:
# AS_ROOT, under UNDER_SUDO, with the standard library only (-S).
SUDO: Final = """\
log(cwd=os.getcwd())
if args[:4] != [sys.executable, "-B", "-m", "e2e.apt"]:
    sys.exit(f"sudo stand-in: runs e2e.apt alone, not {args}")
as_root = [sys.executable, "-S", str(here / "as_root.py"), *args[4:]]
os.execve(sys.executable, as_root, dict(os.environ, UNDER_SUDO="1"))
"""
# What `python3 -m e2e.apt` does as root: the module found where sudo runs it (as -m finds it),
# with root's user id and the machine's policy file and systemd marker.
AS_ROOT: Final = """\
sys.path.insert(0, os.getcwd())
from e2e import apt

apt.POLICY_RC_D = Path(machine["policy_rc_d"])
apt.SYSTEMD_RUNNING = Path(machine["systemd_running"])
os.geteuid = lambda: 0
sys.exit(apt.main(args))
"""
LOCK: Final = ["-o", f"DPkg::Lock::Timeout={apt.LOCK_TIMEOUT}"]
# The machine of the unit tests: docker.io (not installed yet) brings containerd, which is there
# already, and runc; postgresql brings its server and postgresql-common; docker-registry was
# removed without its configuration.
DEPENDS: Final = {
    "docker.io": ["containerd", "runc"],
    "postgresql": ["postgresql-16"],
    "postgresql-16": ["postgresql-common"],
}
FILES: Final = {
    "docker.io": [
        "/usr/sbin/dockerd",
        "/lib/systemd/system/docker.service",
        "/lib/systemd/system/docker.socket",
    ],
    "containerd": ["/usr/bin/containerd", "/lib/systemd/system/containerd.service"],
    "docker-registry": [
        "/etc/docker/registry/config.yml",
        "/lib/systemd/system/docker-registry.service",
    ],
    "postgresql-common": [
        "/usr/lib/systemd/system/postgresql.service",
        "/usr/lib/systemd/system/postgresql@.service",
        "/usr/lib/systemd/system-generators/postgresql-generator",
    ],
    "sysstat": [
        "/usr/lib/systemd/system/sysstat.service",
        "/usr/lib/systemd/system/sysstat-collect.timer",
        "/usr/lib/systemd/system/sysstat-collect.service",
        "/usr/lib/systemd/system/sysstat-collect.service.d/override.conf",
    ],
}
STATES: Final = {"docker.io": "not-installed", "docker-registry": "config-files"}
# What the unit tests install, and the units of what that brings (not containerd's: it was there).
PACKAGES: Final = ["docker.io", "docker-registry", "postgresql", "sysstat"]
BROUGHT_UNITS: Final = [
    "docker-registry.service",  # docker-registry
    "docker.service",  # docker.io
    "docker.socket",
    "postgresql.service",  # postgresql-common
    "sysstat.service",  # sysstat
    "sysstat-collect.timer",
    "sysstat-collect.service",
]
# Each caller and what it installs: the lists by their file, the rest by name.
CALLERS: Final = {
    ".ci/run": (
        "install-missing postgresql pgbackrest e2e/node-packages.txt e2e/image-packages.txt",
    ),
    "mk/bench.mk": ("install-missing --sudo wrk postgresql",),
    ".github/workflows/test.yml": (
        "install-missing --sudo postgresql pgbackrest",
        "install-missing --sudo e2e/node-packages.txt e2e/image-packages.txt",
    ),
}


@dataclass(frozen=True)
class Machine:
    """The stand-ins' folder, and where the machine's policy file and systemd marker are."""

    folder: Path
    policy_rc_d: Path
    systemd_running: Path

    def calls(self, command: str) -> list[dict[str, Any]]:
        return [c for c in logged_calls(self.folder / CALLS) if c["command"] == command]

    def installed(self) -> list[str]:
        return (self.folder / INSTALLED).read_text().split()


@pytest.fixture(autouse=True)
def no_system_paths(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """No test reaches the machine's own policy file, nor learns that systemd runs it."""
    monkeypatch.setattr(apt, "POLICY_RC_D", tmp_path / "unset" / "policy-rc.d")
    monkeypatch.setattr(apt, "SYSTEMD_RUNNING", tmp_path / "unset" / "systemd")


def machine(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    *,
    installed: list[str],
    systemd: bool = False,
    apt_get_fails: bool = False,
    uid: int = 0,
) -> Machine:
    """The stand-ins in a folder first on PATH, for the machine described; e2e.apt run in this
    process (as user `uid`) finds its policy file and systemd marker there too."""
    folder = tmp_path / "bin"
    folder.mkdir()
    made = Machine(folder, tmp_path / "usr-sbin" / "policy-rc.d", tmp_path / "run-systemd-system")
    made.policy_rc_d.parent.mkdir()
    if systemd:
        made.systemd_running.mkdir()
    setup = {
        "policy_rc_d": str(made.policy_rc_d),
        "systemd_running": str(made.systemd_running),
        "apt_get_fails": apt_get_fails,
        "depends": DEPENDS,
        "files": FILES,
        "states": STATES,
    }
    (folder / MACHINE).write_text(json.dumps(setup))
    (folder / INSTALLED).write_text("\n".join(installed))
    header = HEADER.format(python=sys.executable, machine=MACHINE, installed=INSTALLED, calls=CALLS)
    for name, body in [
        ("apt-get", APT_GET),
        ("dpkg-query", DPKG_QUERY),
        ("dpkg", DPKG),
        ("systemctl", SYSTEMCTL),
        ("sudo", SUDO),
        ("as_root.py", AS_ROOT),
    ]:
        stand_in(folder, name, header + body)
    monkeypatch.setenv("PATH", first_on_path(folder))
    monkeypatch.setattr(apt, "POLICY_RC_D", made.policy_rc_d)
    monkeypatch.setattr(apt, "SYSTEMD_RUNNING", made.systemd_running)
    monkeypatch.setattr("os.geteuid", lambda: uid)
    return made


# The policy file as apt-get found it while it installed: ours, forbidding every start.
HELD: Final = {"exists": True, "exit": 101}


def test_only_the_missing_packages_of_the_lists_and_names_are_installed(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capfd: pytest.CaptureFixture[str]
) -> None:
    node = debian_packages()
    at = machine(tmp_path, monkeypatch, installed=[node[0], "wrk"])
    extra = tmp_path / "more" / "packages.txt"
    extra.parent.mkdir()
    extra.write_text("# more\nwrk  # already there\nhello\n")
    assert apt.main(["install-missing", "postgresql", "e2e/node-packages.txt", str(extra)]) == 0
    missing = ["postgresql", *node[1:], "hello"]
    assert [[c["frontend"], *c["args"]] for c in at.calls("apt-get")] == [
        ["noninteractive", *LOCK, "update", "-q"],
        ["noninteractive", *LOCK, "install", "-yq", "--no-install-recommends", *missing],
    ]
    assert f"installing {' '.join(missing)} from Debian" in capfd.readouterr().err


def test_nothing_missing_runs_no_apt_get(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """`python3 -S -m e2e.apt install-missing ARGS` from the project root: -S leaves out every
    installed package, as a machine's python3 before the virtual environment has none."""
    at = machine(tmp_path, monkeypatch, installed=["wrk", "postgresql"])
    done = subprocess.run(
        [sys.executable, "-S", "-m", "e2e.apt", "install-missing", "--sudo", "wrk", "postgresql"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    assert [c["args"][-1] for c in at.calls("dpkg-query")] == ["wrk", "postgresql"]
    assert at.calls("apt-get") == at.calls("sudo") == []


@pytest.mark.parametrize("apt_get_fails", [False, True], ids=["installs", "fails"])
def test_no_service_may_start_while_apt_get_installs_and_the_policy_goes_after(
    apt_get_fails: bool, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    at = machine(tmp_path, monkeypatch, installed=[], apt_get_fails=apt_get_fails)
    assert apt.main(["install-missing", "postgresql"]) == (1 if apt_get_fails else 0)
    assert [c["policy"] for c in at.calls("apt-get")] == [None, HELD]
    assert not at.policy_rc_d.exists()


def test_the_administrator_s_policy_file_is_used_and_left_as_it_is(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    at = machine(tmp_path, monkeypatch, installed=[])
    theirs = "#!/bin/sh\n# the administrator's: every service may start\nexit 0\n"
    at.policy_rc_d.write_text(theirs)
    at.policy_rc_d.chmod(0o750)
    assert apt.main(["install-missing", "postgresql"]) == 0
    assert [c["policy"] for c in at.calls("apt-get")] == [None, {"exists": True, "exit": 0}]
    assert at.policy_rc_d.read_text() == theirs
    assert at.policy_rc_d.stat().st_mode & 0o777 == 0o750


def test_with_systemd_only_the_units_of_the_packages_installed_are_disabled(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capfd: pytest.CaptureFixture[str]
) -> None:
    at = machine(tmp_path, monkeypatch, installed=["containerd", "wrk"], systemd=True)
    assert apt.main(["install-missing", "wrk", *PACKAGES]) == 0
    assert "runc" in at.installed()  # docker.io's, which this install brought
    assert [c["args"] for c in at.calls("systemctl")] == [["disable", "--now", *BROUGHT_UNITS]]
    told = [line for line in capfd.readouterr().err.splitlines() if "disabled" in line]
    assert told == [
        f"e2e.apt: left disabled and stopped: {' '.join(BROUGHT_UNITS)} "
        "(to run one now and at boot: systemctl enable --now UNIT)"
    ]


def test_the_units_a_failed_install_brought_are_disabled_too(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    at = machine(tmp_path, monkeypatch, installed=["containerd"], systemd=True, apt_get_fails=True)
    assert apt.main(["install-missing", *PACKAGES]) == 1
    assert [c["args"] for c in at.calls("systemctl")] == [["disable", "--now", *BROUGHT_UNITS]]


def test_nothing_brought_with_units_runs_no_systemctl(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capfd: pytest.CaptureFixture[str]
) -> None:
    at = machine(tmp_path, monkeypatch, installed=[], systemd=True)
    assert apt.main(["install-missing", "wrk"]) == 0
    assert [c["args"] for c in at.calls("dpkg")] == [["-L", "wrk"]]
    assert at.calls("systemctl") == []
    assert "disabled" not in capfd.readouterr().err


def test_without_systemd_no_unit_is_looked_up_or_disabled(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capfd: pytest.CaptureFixture[str]
) -> None:
    at = machine(tmp_path, monkeypatch, installed=["containerd"])
    assert apt.main(["install-missing", *PACKAGES]) == 0
    assert "docker.io" in at.installed()
    assert at.calls("dpkg") == at.calls("systemctl") == []
    assert [c["args"][-1] for c in at.calls("dpkg-query")] == PACKAGES  # each one's status alone
    assert "disabled" not in capfd.readouterr().err


def test_not_root_it_installs_only_when_told_to_use_sudo(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capfd: pytest.CaptureFixture[str]
) -> None:
    at = machine(tmp_path, monkeypatch, installed=[], uid=1000)
    assert apt.main(["install-missing", "wrk"]) == 1
    assert "missing Debian packages wrk: apt-get install wrk (as root)" in capfd.readouterr().err
    assert at.calls("apt-get") == at.calls("sudo") == []


def test_through_sudo_it_does_all_of_it_as_root(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capfd: pytest.CaptureFixture[str]
) -> None:
    at = machine(tmp_path, monkeypatch, installed=["containerd", "wrk"], systemd=True, uid=1000)
    monkeypatch.chdir(tmp_path)  # run from elsewhere than the project, which sudo runs it in
    assert apt.main(["install-missing", "--sudo", "wrk", *PACKAGES]) == 0
    assert at.calls("sudo") == [
        {
            "command": "sudo",
            "args": [sys.executable, "-B", "-m", "e2e.apt", "install", *PACKAGES],
            "under_sudo": False,
            "cwd": str(ROOT),
        }
    ]
    apt_get = at.calls("apt-get")
    assert [[c["frontend"], *c["args"]] for c in apt_get] == [
        ["noninteractive", *LOCK, "update", "-q"],
        ["noninteractive", *LOCK, "install", "-yq", "--no-install-recommends", *PACKAGES],
    ]
    assert [c["policy"] for c in apt_get] == [None, HELD]
    assert not at.policy_rc_d.exists()
    systemctl = at.calls("systemctl")
    assert [c["args"] for c in systemctl] == [["disable", "--now", *BROUGHT_UNITS]]
    assert all(c["under_sudo"] for c in apt_get + systemctl)
    assert "e2e.apt: left disabled and stopped: docker-registry.service" in capfd.readouterr().err


def test_a_package_list_s_comments_and_blank_lines_name_nothing(tmp_path: Path) -> None:
    listed = tmp_path / "packages.txt"
    listed.write_text("# a heading\n\ncontainerd  # the runtime\n  runc\n")
    assert apt.listed(listed) == ["containerd", "runc"]


def code_lines(text: str) -> str:
    return "\n".join(line for line in text.splitlines() if not line.lstrip().startswith("#"))


@pytest.mark.parametrize("caller", CALLERS)
def test_each_caller_installs_through_e2e_apt_alone(caller: str) -> None:
    code = code_lines((ROOT / caller).read_text())
    for call in CALLERS[caller]:
        assert f"-m e2e.apt {call}" in code
    assert re.search(r"apt-get|dpkg", code) is None, f"{caller} runs apt-get or dpkg itself"


@pytest.mark.parametrize("caller", [".ci/run", ".github/workflows/test.yml"])
def test_ci_installs_the_packages_the_lists_name_and_no_other(caller: str) -> None:
    code = code_lines((ROOT / caller).read_text())
    for package in [*debian_packages(), *images.APT_PACKAGES]:
        named = re.search(rf"(?<![\w./-]){re.escape(package)}(?![\w.-])", code)
        assert named is None, f"{caller} names {package} itself"


def test_no_other_module_runs_apt_get_or_dpkg() -> None:
    runs = re.compile(r"""["'](apt-get|dpkg-query|dpkg)["']""")
    for name, path in module_files():
        if name != "e2e.apt" and not name.startswith("tests."):
            assert runs.search(path.read_text()) is None, f"{name} runs apt-get or dpkg itself"
