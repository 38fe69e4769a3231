"""The Pulumi CLI, as every tool and the e2e workspace run it: which binary ($PULUMI, else
`pulumi` on PATH), always non-interactive, and the Automation API's handle on the same binary.

Callers keep their own policy for failures (a StackError, a DriftCheckError, the e2e suite's
PulumiError): this module runs the command and hands back what it did.

    python -m tools.pulumi_cli ARGS...    becomes `pulumi ARGS...`, SIGINT given back its default
                                          (`make up`, `make preview`, `make down`)
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import threading
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, NoReturn

if TYPE_CHECKING:
    from pulumi import automation as auto


class PulumiCliError(Exception):
    """The CLI cannot be run at all (not installed, or not where the Automation API looks)."""


def command() -> str:
    """The CLI to run: $PULUMI, else `pulumi` from PATH."""
    return os.environ.get("PULUMI", "pulumi")


def let_plugins_stop() -> None:
    """Give SIGINT back its default in this process, and so in the commands it starts, when the
    process began with SIGINT ignored: an asynchronous command of a non-interactive shell does
    (`make e2e &` in a script, `nohup ... &`). The CLI asks each plugin it is done with to stop
    by SIGINT and kills one that ignores it only after 5 s, so each engine command would wait
    those 5 s (the language host it starts to read the runtime's metadata). Python may set a
    handler from its main thread only; elsewhere this does nothing."""
    if (
        threading.current_thread() is threading.main_thread()
        and signal.getsignal(signal.SIGINT) is signal.SIG_IGN
    ):
        signal.signal(signal.SIGINT, signal.default_int_handler)


def exec_cli(args: Sequence[str]) -> NoReturn:
    """Become `pulumi <args>` in this process, SIGINT given back its default first: how the
    Makefile runs the engine commands a person watches. A shell cannot undo the SIGINT it began
    ignoring; Python can, and the handler it sets is reset to the default by the exec."""
    let_plugins_stop()
    cli = command()
    os.execvp(cli, [cli, *args])


def argv(*args: str, binary: str | None = None) -> list[str]:
    """The command line of `pulumi <args>`: no prompt may ever wait for a person."""
    return [binary or command(), "--non-interactive", *args]


def run(
    args: Sequence[str],
    *,
    timeout: float,
    binary: str | None = None,
    cwd: Path | None = None,
    env: Mapping[str, str] | None = None,
    stdin: str | None = None,
    no_stdin: bool = False,
    capture: bool = True,
) -> subprocess.CompletedProcess[str]:
    """Run `pulumi <args>` and return what it did, whatever its exit status. `stdin` is written
    to it; `no_stdin` closes its stdin instead of handing it this process's. A missing binary
    (FileNotFoundError) and a timeout (subprocess.TimeoutExpired) propagate."""
    let_plugins_stop()
    return subprocess.run(
        argv(*args, binary=binary),
        check=False,
        cwd=cwd,
        env=dict(env) if env is not None else None,
        input=stdin,
        stdin=subprocess.DEVNULL if no_stdin and stdin is None else None,
        capture_output=capture,
        text=True,
        timeout=timeout,
    )


def automation_command(binary: str | None = None) -> auto.PulumiCommand:
    """The Automation API's handle on the CLI `binary` (default: `command()`). A bare name is
    looked up on PATH, as a shell would; a path must be `<root>/bin/pulumi`, the layout the
    Automation API runs."""
    let_plugins_stop()
    name = binary or command()
    if shutil.which(name) is None:
        raise PulumiCliError(f"the Pulumi CLI {name!r} is not installed")
    root: str | None = None
    if os.sep in name:
        path = Path(name)
        if path.parent.name != "bin":
            raise PulumiCliError(f"{path}: the Automation API runs <root>/bin/pulumi")
        root = str(path.parent.parent)
    # Imported here: the Automation API is most of this module's import time, which `make up`
    # would pay before every engine command it runs through this module (`exec_cli`).
    from pulumi import automation

    return automation.PulumiCommand(root=root, skip_version_check=True)


if __name__ == "__main__":
    exec_cli(sys.argv[1:])
