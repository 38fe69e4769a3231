"""A deployed stack's cluster, through the Pulumi and kubectl CLIs: what the operations tools
(`make switchover`) act on; and the one reader of a stack's exported state (`make down`,
tools/drift.py, the e2e workspace).

The stack says where its application runs: the namespace and the kubeconfig are its outputs (the
kubeconfig itself for a cluster the program made, `local`, `gke` or `eks`; the file's path for an
`existing` one), and an `existing` cluster's context is its `cluster` config. The CLIs are $PULUMI
and $KUBECTL, `pulumi` and `kubectl` on PATH by default; the backend and the passphrase come from
the environment.

    pulumi stack export --stack NAME | python -m tools.stack protected
                                        the URN of each protected resource, one a line (make down)
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shlex
import signal
import subprocess
import sys
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from components import stack_file
from components.config import (
    ConfigError,
    ExistingCluster,
    parse_cluster,
    parse_database_replicas,
    private_file,
)
from tools import pulumi_cli


class StackError(Exception):
    """Why a command against the stack stopped, and what to do about it."""


def run(
    argv: Sequence[str],
    *,
    check: bool = True,
    capture: bool = True,
    timeout: float | None = 120,
    env: Mapping[str, str] | None = None,
) -> subprocess.CompletedProcess[str]:
    """Run a CLI to its end with no stdin, the tools' one way to: with `check`, a non-zero exit
    is a StackError naming the command and what it printed; a missing CLI or a command past
    `timeout` (None: no bound) always is one.

    Started while the caller holds the stop signals off (harness.signals.held: a change to a
    cluster and its undo), the command runs in a process group of its own. It inherits the
    block, but a Go CLI (kubectl, pulumi) unblocks SIGINT, SIGTERM and SIGHUP at its start, and
    a terminal sends a Ctrl-C to the whole foreground group: the kubectl that puts a cluster
    back would stop half-way."""
    held = signal.SIGINT in signal.pthread_sigmask(signal.SIG_BLOCK, [])
    return _checked(
        argv,
        lambda: subprocess.run(
            list(argv),
            capture_output=capture,
            text=True,
            check=False,
            timeout=timeout,
            stdin=subprocess.DEVNULL,
            env=dict(env) if env is not None else None,
            process_group=0 if held else None,
        ),
        check=check,
        capture=capture,
        timeout=timeout,
    )


def pulumi(
    *args: str,
    stack: str,
    capture: bool = True,
    timeout: float = 120,
    stdin: str | None = None,
    binary: str | None = None,
    cwd: Path | None = None,
) -> str:
    """`pulumi <args> --stack <stack>`'s output, run as every tool runs the CLI (pulumi_cli):
    `binary` (default: pulumi_cli.command()) in `cwd` (default: this process's). `stdin` is
    written to it (a secret value, kept out of the command line); else it has none."""
    args = (*args, "--stack", stack)
    done = _checked(
        pulumi_cli.argv(*args, binary=binary),
        lambda: pulumi_cli.run(
            args,
            timeout=timeout,
            binary=binary,
            cwd=cwd,
            stdin=stdin,
            no_stdin=True,
            capture=capture,
        ),
        check=True,
        capture=capture,
        timeout=timeout,
    )
    return done.stdout or ""


def _checked(
    argv: Sequence[str],
    start: Callable[[], subprocess.CompletedProcess[str]],
    *,
    check: bool,
    capture: bool,
    timeout: float | None,
) -> subprocess.CompletedProcess[str]:
    """What `start` (running `argv`) did, its failures as StackErrors (see `run`)."""
    try:
        result = start()
    except FileNotFoundError as error:
        raise StackError(f"{argv[0]} is not installed (or not on PATH)") from error
    except subprocess.TimeoutExpired as error:
        raise StackError(f"`{shlex.join(argv)}` did not finish within {timeout:.0f} s") from error
    if check and result.returncode != 0:
        detail = _said((result.stderr or result.stdout or "").strip()) if capture else ""
        raise StackError(f"`{shlex.join(argv)}` exited {result.returncode}: {detail}")
    return result


# A line of Kubernetes' client library's own log (klog: severity, date, time, thread id, file and
# line), which kubectl writes before its message: five of them for an API server that refuses.
_CLIENT_LOG = re.compile(r"[IWEF]\d{4} \d{2}:\d{2}:\d{2}\.\d+\s+\d+ [\w.-]+:\d+\] ")


def _said(output: str) -> str:
    """What a command printed as its reason: without kubectl's client library's log lines,
    unless that is all it printed (then the last of them)."""
    lines = output.splitlines()
    kept = [line for line in lines if not _CLIENT_LOG.match(line)]
    return "\n".join(kept or lines[-1:])


def exported_resources(exported: Mapping[str, Any]) -> list[dict[str, Any]]:
    """The resources of a state as `pulumi stack export` prints it, `{"version": 3,
    "deployment": {..., "resources": [...]}}`; none for a stack never deployed, whose deployment
    is empty."""
    if "resources" in exported:
        # Its `deployment` alone: the wrong half, which would read as a stack with nothing in it.
        raise ValueError("expected `pulumi stack export`'s document, got its deployment")
    deployment = exported.get("deployment") or {}
    return list(deployment.get("resources") or [])


def protected_urns(exported: Mapping[str, Any]) -> list[str]:
    """The URN of every resource of an exported state that carries `protect`."""
    return [r["urn"] for r in exported_resources(exported) if r.get("protect")]


@dataclass(frozen=True)
class Stack:
    name: str
    namespace: str
    # None: kubectl's own default ($KUBECONFIG, else ~/.kube/config).
    kubeconfig: Path | None
    context: str | None
    # Whether `kubeconfig` is the stack's own, written for this run only (gone when it ends).
    kubeconfig_is_temporary: bool = False


def read_stack(name: str, workdir: Path) -> Stack:
    """The stack's namespace and cluster. How its `kubeconfig` output is read depends on the
    cluster's kind (its `cluster` config), never on the text: an `existing` cluster's is the
    file's path, used as it is; a cluster the program made exports the kubeconfig itself (YAML
    from `local` and `gke`, pulumi-eks's one line of JSON from `eks`), which is written to
    `workdir`, owner-only, for kubectl: the caller removes it. No error carries its content."""
    values = _config_values(name)
    outputs: dict[str, Any] = json.loads(
        pulumi("stack", "output", "--json", "--show-secrets", stack=name)
    )
    if "namespace" not in outputs:
        raise StackError(f"stack {name} has no namespace output: is it deployed?")
    try:
        cluster = parse_cluster(values.get("cluster"))
    except ConfigError as error:
        raise StackError(f"stack {name}: {error}") from error
    namespace = str(outputs["namespace"])
    kubeconfig = outputs.get("kubeconfig")
    if isinstance(cluster, ExistingCluster):
        path = Path(os.path.expanduser(str(kubeconfig))) if kubeconfig else None
        return Stack(name=name, namespace=namespace, kubeconfig=path, context=cluster.context)
    if not isinstance(kubeconfig, str) or not kubeconfig.strip():
        # Not kubectl's default instead: that is some other cluster.
        raise StackError(
            f"stack {name} has no kubeconfig output for its {cluster.provider} cluster: "
            "is it deployed?"
        )
    return Stack(
        name=name,
        namespace=namespace,
        kubeconfig=private_file(workdir / "kubeconfig", kubeconfig),
        context=None,
        kubeconfig_is_temporary=True,
    )


def database_replicas(name: str) -> int:
    """The stack's `database.replicas`: the instances `pulumi up` deploys."""
    try:
        return parse_database_replicas(_config_values(name).get("database"))
    except ConfigError as error:
        raise StackError(f"stack {name}: {error}") from error


def _config_values(name: str) -> dict[str, object]:
    """The stack's `mlstack:` values, by key without the namespace."""
    entries = json.loads(pulumi("config", "--json", stack=name))
    return stack_file.from_cli(entries, stack_file.project_name())


class Kubectl:
    """kubectl against the stack's cluster, in its namespace."""

    def __init__(self, stack: Stack) -> None:
        self.stack = stack

    def argv(self, *args: str) -> list[str]:
        command = [os.environ.get("KUBECTL", "kubectl")]
        if self.stack.kubeconfig is not None:
            command += ["--kubeconfig", str(self.stack.kubeconfig)]
        if self.stack.context:
            command += ["--context", self.stack.context]
        return [*command, "--namespace", self.stack.namespace, *args]

    def __call__(
        self, *args: str, check: bool = True, timeout: float = 120
    ) -> subprocess.CompletedProcess[str]:
        return run(self.argv(*args), check=check, timeout=timeout)

    def exec_argv(self, pod: str, container: str, *argv: str) -> list[str]:
        """The command line of `argv` run in `pod`'s `container`."""
        return self.argv("exec", pod, "--container", container, "--", *argv)

    def shown(self, *args: str) -> str:
        """`kubectl args` as a person runs it in a shell, after this run: a kubeconfig the stack
        holds is read from the stack again, since this run's copy is gone by then."""
        command = shlex.join(self.argv(*args))
        if self.stack.kubeconfig is None or not self.stack.kubeconfig_is_temporary:
            return command
        fetched = shlex.join(
            [
                "pulumi",
                "stack",
                "output",
                "kubeconfig",
                "--show-secrets",
                "--stack",
                self.stack.name,
            ]
        )
        return command.replace(shlex.quote(str(self.stack.kubeconfig)), f"<({fetched})")

    def exec(
        self, pod: str, container: str, *argv: str, timeout: float = 120
    ) -> subprocess.CompletedProcess[str]:
        """Run `argv` in `pod`'s `container`, whatever its exit status: the caller tells the
        program's failures (and kubectl's own) from its output."""
        return run(self.exec_argv(pod, container, *argv), check=False, timeout=timeout)

    def get_json(self, *args: str) -> dict[str, Any]:
        """`kubectl get ... --output json`; {} when the object is not there."""
        text = self("get", *args, "--ignore-not-found", "--output", "json").stdout
        found: dict[str, Any] = json.loads(text) if text.strip() else {}
        return found


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m tools.stack", description="What an exported state says."
    )
    commands = parser.add_subparsers(dest="command", required=True)
    commands.add_parser("protected", help="`pulumi stack export` on stdin -> protected URNs")
    parser.parse_args(argv)
    urns = protected_urns(json.load(sys.stdin))
    print("\n".join(urns), end="\n" if urns else "")
    return 0


if __name__ == "__main__":
    sys.exit(main())
