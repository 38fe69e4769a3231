"""e2e/toolchain/build.sh run for real, offline: its tool lists (versions.env), a stand-in `go`
that serves made-up modules and "builds" a binary by writing out the wrapper module it was asked
to build in, and a PATH of the machine's own /usr/bin and /bin behind the stand-ins, so that no
installed Go, Pulumi or tool of the machine takes part."""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
from pathlib import Path
from typing import Final

from e2e.controlplane import TOOLCHAIN, read_versions
from tests.stand_ins import logged_calls, stand_in

BUILD: Final = TOOLCHAIN / "build.sh"
VERSIONS: Final = read_versions()
# Where the stand-in go logs its calls, beside it: one JSON list of arguments a line.
GO_CALLS: Final = "go-calls.jsonl"
# `go mod download -json MODULE@VERSION` answers with MODULES/MODULE@VERSION (a go.mod of that
# module made when the test has not written one); `go build -o OUT PACKAGE...` writes the go.mod
# of the folder it runs in to OUT (to OUT/<last element of each PACKAGE> when OUT ends in /).
FAKE_GO: Final = """\
#!{python}
import json, os, sys
from pathlib import Path

here = Path(__file__).parent
args = sys.argv[1:]
with (here / {calls!r}).open("a") as log:
    log.write(json.dumps(args) + "\\n")
if args[:3] == ["mod", "download", "-json"]:
    module, version = args[3].split("@")
    folder = Path({modules!r}) / args[3]
    if not (folder / "go.mod").exists():
        folder.mkdir(parents=True, exist_ok=True)
        (folder / "go.mod").write_text(f"module {{module}}\\n\\ngo 1.24\\n")
    print(json.dumps({{"Path": module, "Version": version, "Dir": str(folder)}}))
elif args[:1] == ["build"]:
    out = args[args.index("-o") + 1]
    packages = args[args.index("-o") + 2:]
    wrapper = Path("go.mod").read_text()
    targets = [Path(out)]
    if out.endswith("/"):
        targets = [Path(out) / p.rsplit("/", 1)[-1] for p in packages]
    for target in targets:
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text(wrapper)
        target.chmod(0o755)
else:
    sys.exit(f"stand-in go: {{args}} is not answered")
"""


def tools(kind: str) -> list[str]:
    """versions.env's list of `kind` ("RELEASED", "BUILT" or "OWN") tools."""
    return VERSIONS[f"{kind}_TOOLS"].strip('"').split()


def stand_in_go(folder: Path, modules: Path) -> None:
    """The stand-in `go` in `folder`, serving the modules under `modules`, and `python3` beside
    it (build.sh reads go's JSON with it)."""
    stand_in(
        folder, "go", FAKE_GO.format(python=sys.executable, calls=GO_CALLS, modules=str(modules))
    )
    (folder / "python3").symlink_to(sys.executable)


def go_calls(folder: Path) -> list[list[str]]:
    return logged_calls(folder / GO_CALLS)


def run_build(
    tmp_path: Path,
    *tools: str,
    path: tuple[Path, ...] = (),
    stderr: Path | None = None,
    **env: str,
) -> subprocess.CompletedProcess[str]:
    """`bash build.sh TOOLS...` with the stand-ins in tmp_path/bin (and the folders `path`) first
    on a PATH of /usr/bin and /bin, its cache and home in tmp_path, no $KUBEBUILDER_ASSETS unless
    `env` names one, and `env` added; its stderr written to `stderr` as it comes when given
    (the result's stderr is then None)."""
    bin_dir = tmp_path / "bin"
    if not (bin_dir / "go").exists():
        stand_in_go(bin_dir, tmp_path / "modules")
    base = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("MLSTACK_E2E", "KUBEBUILDER", "PULUMI", "GO"))
    }
    with contextlib.ExitStack() as files:
        errors = subprocess.PIPE if stderr is None else files.enter_context(stderr.open("w"))
        return subprocess.run(
            ["bash", str(BUILD), *tools],
            env={
                **base,
                "PATH": os.pathsep.join([*map(str, path), str(bin_dir), "/usr/bin", "/bin"]),
                "HOME": str(tmp_path / "home"),
                "MLSTACK_E2E_CACHE": str(tmp_path / "cache"),
                **env,
            },
            stdout=subprocess.PIPE,
            stderr=errors,
            text=True,
            timeout=120,
            check=False,
        )
