"""e2e/apt.py, the one installer of Debian packages: its command line run for real with stand-in
`dpkg-query`, `apt-get` and `sudo`, with the interpreter's standard library only (it runs before
any virtual environment exists), and every caller held to it."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path
from typing import Final

import pytest

from e2e import apt, images
from e2e.node.packages import debian_packages
from tests.paths import ROOT
from tests.stand_ins import first_on_path, logged_calls, stand_in
from tests.unit.modules import module_files

CALLS: Final = "calls.jsonl"
INSTALLED: Final = "installed.txt"
# dpkg-query -W -f=${Status} NAME: as dpkg answers for the packages in INSTALLED beside it.
FAKE_DPKG_QUERY: Final = """\
#!{python}
import sys
from pathlib import Path

installed = (Path(__file__).parent / {installed!r}).read_text().split()
if sys.argv[-1] not in installed:
    sys.exit(f"dpkg-query: no packages found matching {{sys.argv[-1]}}")
print("install ok installed", end="")
"""
# apt-get and sudo: each call logged with the DEBIAN_FRONTEND it was given; sudo then runs the rest.
FAKE_LOGGED: Final = """\
#!{python}
import json, os, sys
from pathlib import Path

with (Path(__file__).parent / {calls!r}).open("a") as log:
    log.write(json.dumps([{name!r}, os.environ.get("DEBIAN_FRONTEND"), *sys.argv[1:]]) + "\\n")
if {name!r} == "sudo":
    os.execvp(sys.argv[1], sys.argv[1:])
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


def stand_ins(folder: Path, installed: list[str]) -> Path:
    folder.mkdir()
    (folder / INSTALLED).write_text("\n".join(installed))
    python = sys.executable
    stand_in(folder, "dpkg-query", FAKE_DPKG_QUERY.format(python=python, installed=INSTALLED))
    for name in ("apt-get", "sudo"):
        stand_in(folder, name, FAKE_LOGGED.format(python=python, calls=CALLS, name=name))
    return folder


def calls(folder: Path) -> list[list[str | None]]:
    return logged_calls(folder / CALLS)


def apt_get_calls(folder: Path) -> list[list[str | None]]:
    return [call[1:] for call in calls(folder) if call[0] == "apt-get"]


def install_missing(folder: Path, *args: str) -> subprocess.CompletedProcess[str]:
    """`python3 -S -m e2e.apt install-missing ARGS` from the project root: -S leaves out every
    installed package, as a machine's python3 before the virtual environment has none."""
    return subprocess.run(
        [sys.executable, "-S", "-m", "e2e.apt", "install-missing", *args],
        cwd=ROOT,
        env={"PATH": first_on_path(folder)},
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def test_only_the_missing_packages_of_the_lists_and_names_are_installed(tmp_path: Path) -> None:
    node = debian_packages()
    folder = stand_ins(tmp_path / "bin", installed=[node[0], "wrk"])
    extra = tmp_path / "more" / "packages.txt"
    extra.parent.mkdir()
    extra.write_text("# more\nwrk  # already there\nhello\n")
    done = install_missing(folder, "--sudo", "postgresql", "e2e/node-packages.txt", str(extra))
    assert done.returncode == 0, done.stderr
    missing = ["postgresql", *node[1:], "hello"]
    assert apt_get_calls(folder) == [
        ["noninteractive", *LOCK, "update", "-q"],
        ["noninteractive", *LOCK, "install", "-yq", "--no-install-recommends", *missing],
    ]
    assert f"installing {' '.join(missing)} from Debian" in done.stderr


def test_nothing_missing_runs_no_apt_get(tmp_path: Path) -> None:
    folder = stand_ins(tmp_path / "bin", installed=["wrk", "postgresql"])
    done = install_missing(folder, "--sudo", "wrk", "postgresql")
    assert done.returncode == 0, done.stderr
    assert calls(folder) == []


def test_not_root_it_installs_through_sudo_only_when_told(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    folder = stand_ins(tmp_path / "bin", installed=[])
    monkeypatch.setenv("PATH", first_on_path(folder))
    monkeypatch.setattr("os.geteuid", lambda: 1000)
    assert apt.main(["install-missing", "wrk"]) == 1
    assert calls(folder) == []
    assert apt.main(["install-missing", "--sudo", "wrk"]) == 0
    apt_get = ["env", "DEBIAN_FRONTEND=noninteractive", "apt-get", *LOCK]
    assert [call[2:] for call in calls(folder) if call[0] == "sudo"] == [
        [*apt_get, "update", "-q"],
        [*apt_get, "install", "-yq", "--no-install-recommends", "wrk"],
    ]


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
