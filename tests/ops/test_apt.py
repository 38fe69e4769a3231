"""e2e/apt.py, the one installer of Debian packages: run against stand-in `dpkg-query`, `apt-get`
and `sudo` on a made-up machine (its packages); its command line with the interpreter's standard
library only (it runs before any virtual environment exists); and every caller held to it."""

from __future__ import annotations

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

# The stand-ins' files, beside them: each call they answer, and the packages installed on the
# machine, one a line.
CALLS: Final = "calls.jsonl"
INSTALLED: Final = "installed.txt"
# What every stand-in starts with: the packages installed, its arguments, and `log`, which writes
# one call to CALLS: the command's name, its arguments, whether it runs under the stand-in sudo,
# and more.
HEADER: Final = """\
#!{python}
import json, os, subprocess, sys
from pathlib import Path

here = Path(__file__).parent
installed = (here / "{installed}").read_text().split()
args = sys.argv[1:]


def log(**more):
    call = dict(command=Path(__file__).name, args=args, under_sudo="UNDER_SUDO" in os.environ)
    with (here / "{calls}").open("a") as calls:
        calls.write(json.dumps(dict(call, **more)) + "\\n")

"""
# apt-get: logged with its DEBIAN_FRONTEND.
APT_GET: Final = """\
log(frontend=os.environ.get("DEBIAN_FRONTEND"))
"""
# dpkg-query: a package's status; nothing else.
DPKG_QUERY: Final = """\
log()
if len(args) == 3 and args[:2] == ["-W", "-f=${Status}"]:
    if args[2] not in installed:
        sys.exit(f"dpkg-query: no packages found matching {args[2]}")
    print("install ok installed", end="")
else:
    sys.exit(f"dpkg-query stand-in: unexpected {args}")
"""
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
# with root's user id.
AS_ROOT: Final = """\
sys.path.insert(0, os.getcwd())
from e2e import apt

os.geteuid = lambda: 0
sys.exit(apt.main(args))
"""
LOCK: Final = ["-o", f"DPkg::Lock::Timeout={apt.LOCK_TIMEOUT}"]
# Each caller and what it installs: the lists by their file, the rest by name.
CALLERS: Final = {
    ".ci/run": ("install-missing postgresql e2e/node-packages.txt e2e/image-packages.txt",),
    "mk/bench.mk": ("install-missing --sudo wrk postgresql",),
    ".github/workflows/test.yml": (
        "install-missing --sudo postgresql",
        "install-missing --sudo e2e/node-packages.txt e2e/image-packages.txt",
    ),
}


@dataclass(frozen=True)
class Machine:
    """The stand-ins' folder."""

    folder: Path

    def calls(self, command: str) -> list[dict[str, Any]]:
        return [c for c in logged_calls(self.folder / CALLS) if c["command"] == command]


def machine(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, *, installed: list[str], uid: int = 0
) -> Machine:
    """The stand-ins in a folder first on PATH, for the machine described; e2e.apt run in this
    process as user `uid`."""
    folder = tmp_path / "bin"
    folder.mkdir()
    (folder / INSTALLED).write_text("\n".join(installed))
    header = HEADER.format(python=sys.executable, installed=INSTALLED, calls=CALLS)
    for name, body in [
        ("apt-get", APT_GET),
        ("dpkg-query", DPKG_QUERY),
        ("sudo", SUDO),
        ("as_root.py", AS_ROOT),
    ]:
        stand_in(folder, name, header + body)
    monkeypatch.setenv("PATH", first_on_path(folder))
    monkeypatch.setattr("os.geteuid", lambda: uid)
    return Machine(folder)


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


def test_not_root_it_installs_only_when_told_to_use_sudo(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capfd: pytest.CaptureFixture[str]
) -> None:
    at = machine(tmp_path, monkeypatch, installed=[], uid=1000)
    assert apt.main(["install-missing", "wrk"]) == 1
    assert "missing Debian packages wrk: apt-get install wrk (as root)" in capfd.readouterr().err
    assert at.calls("apt-get") == at.calls("sudo") == []


def test_through_sudo_it_does_all_of_it_as_root(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    at = machine(tmp_path, monkeypatch, installed=["wrk"], uid=1000)
    monkeypatch.chdir(tmp_path)  # run from elsewhere than the project, which sudo runs it in
    missing = ["postgresql", "hello"]
    assert apt.main(["install-missing", "--sudo", "wrk", *missing]) == 0
    assert at.calls("sudo") == [
        {
            "command": "sudo",
            "args": [sys.executable, "-B", "-m", "e2e.apt", "install", *missing],
            "under_sudo": False,
            "cwd": str(ROOT),
        }
    ]
    apt_get = at.calls("apt-get")
    assert [[c["frontend"], *c["args"]] for c in apt_get] == [
        ["noninteractive", *LOCK, "update", "-q"],
        ["noninteractive", *LOCK, "install", "-yq", "--no-install-recommends", *missing],
    ]
    assert all(c["under_sudo"] for c in apt_get)


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
