"""tools/stack.py's `read_stack`: how the operations tools (`make switchover`, `make backup`,
`make restore`) reach a stack's cluster, for each kind of cluster, against the stand-in `pulumi`
answering the stack's config and outputs and tests/ops/fake_kubectl.py, which logs the
kubeconfig each call was given."""

from __future__ import annotations

import os
import stat
import sys
from pathlib import Path

import pytest

from harness import signals
from tests.copies import copy_project, run_in
from tests.ops.stack_fakes import EKS_TOKEN, MADE_CLUSTERS, NAMESPACE, Fakes, made_cluster_config
from tools.stack import Kubectl, Stack, StackError, read_stack, run


@pytest.fixture
def fakes(cli_folder: Path) -> Fakes:
    return Fakes(cli_folder)


@pytest.fixture
def work(tmp_path: Path) -> Path:
    """The folder a tool hands read_stack (its temporary directory)."""
    folder = tmp_path / "work"
    folder.mkdir()
    return folder


@pytest.mark.parametrize("kind", list(MADE_CLUSTERS))
def test_the_kubeconfig_a_made_cluster_exports_reaches_kubectl_in_an_owner_only_file(
    kind: str, fakes: Fakes, work: Path
) -> None:
    kubeconfig = fakes.made_cluster(kind)
    stack = read_stack("prod", work)
    assert stack == Stack("prod", NAMESPACE, work / "kubeconfig", None, True)
    assert stat.S_IMODE((work / "kubeconfig").stat().st_mode) == 0o600
    Kubectl(stack).get_json("statefulset", "database")
    (call,) = fakes.calls()
    assert call["args"][:4] == ["--kubeconfig", str(work / "kubeconfig"), "--namespace", NAMESPACE]
    assert call["kubeconfig"] == kubeconfig


def test_an_existing_cluster_is_reached_through_the_file_it_exports_and_its_context(
    fakes: Fakes, work: Path
) -> None:
    # Fakes' own stack: provider existing, context e2e, its kubeconfig's path as the output.
    stack = read_stack("prod", work)
    assert stack == Stack("prod", NAMESPACE, fakes.kubeconfig, "e2e", False)
    assert list(work.iterdir()) == []
    Kubectl(stack).get_json("statefulset", "database")
    fakes.assert_every_call_on_the_stack()


def test_a_renamed_copy_s_tools_read_the_cluster_from_its_own_namespace(
    fakes: Fakes, work: Path, tmp_path: Path
) -> None:
    """`pulumi config --json` of a copy named `mlplatform` gives its keys as `mlplatform:`
    (README, "Copying mlstack")."""
    copy = copy_project(tmp_path / "project", "mlplatform")
    cluster = {"provider": "existing", "context": "e2e", "kubeconfig": str(fakes.kubeconfig)}
    fakes.stack(
        {"mlplatform:cluster": {"objectValue": cluster}},
        {"namespace": "mlplatform-prod", "kubeconfig": str(fakes.kubeconfig)},
    )
    read = (
        "import sys, pathlib, tools.stack as s; "
        "print(s.read_stack('prod', pathlib.Path(sys.argv[1])))"
    )
    ran = run_in(copy, "-c", read, str(work))
    assert ran.returncode == 0, ran.stderr
    assert ran.stdout.strip() == repr(Stack("prod", "mlplatform-prod", fakes.kubeconfig, "e2e"))


def test_no_error_of_kubectl_on_an_eks_stack_shows_its_kubeconfig(fakes: Fakes, work: Path) -> None:
    fakes.made_cluster("eks")
    stack = read_stack("staging", work)
    with pytest.raises(StackError) as raised:
        Kubectl(stack)("cordon", "node-1")  # the stand-in refuses it: exit 1
    message = str(raised.value)
    assert EKS_TOKEN not in message
    assert f"--kubeconfig {work / 'kubeconfig'} " in message
    assert message.endswith("exited 1: fake kubectl: unexpected cordon node-1")
    # The command a person runs later fetches it from the stack instead.
    fetched = "pulumi stack output kubeconfig --show-secrets --stack staging"
    assert Kubectl(stack).shown("get", "pods") == (
        f"kubectl --kubeconfig <({fetched}) --namespace {NAMESPACE} get pods"
    )


@pytest.mark.parametrize("output", [{}, {"kubeconfig": ""}], ids=["missing", "empty"])
def test_a_made_cluster_without_its_kubeconfig_is_an_error_not_kubectl_s_default(
    output: dict[str, str], fakes: Fakes, work: Path
) -> None:
    fakes.stack(made_cluster_config("eks"), {"namespace": NAMESPACE, **output})
    with pytest.raises(StackError) as raised:
        read_stack("staging", work)
    assert str(raised.value) == (
        "stack staging has no kubeconfig output for its eks cluster: is it deployed?"
    )
    assert list(work.iterdir()) == []


def test_a_refusing_api_server_is_kubectl_s_one_line_not_its_client_s_log() -> None:
    """kubectl reaching no API server logs each try (klog) before its message: the error keeps
    the message alone. A command that prints nothing but such lines keeps the last."""
    refused = (
        "The connection to the server 127.0.0.1:1 was refused - did you specify the right host?"
    )
    logged = (
        'E1207 17:01:02.123456   12345 memcache.go:265] "Unhandled Error" err="couldn\'t get '
        'current server API group list: dial tcp 127.0.0.1:1: connect: connection refused"'
    )
    for printed, said in (([logged] * 5 + [refused], refused), ([logged] * 2, logged)):
        script = f"import sys; sys.stderr.write({chr(10).join(printed)!r}); sys.exit(1)"
        with pytest.raises(StackError) as raised:
            run([sys.executable, "-c", script])
        assert str(raised.value).endswith(f" exited 1: {said}")


def test_a_command_run_with_the_stop_signals_held_off_is_out_of_the_terminal_s_group() -> None:
    """A terminal sends a Ctrl-C to the whole foreground process group, and a Go CLI unblocks
    it at its start whatever it inherits: a command the tools run while they hold the stop
    signals off (a change to a cluster, and its undo) is in a process group of its own; any
    other, in theirs."""

    def group() -> int:
        return int(run([sys.executable, "-c", "import os; print(os.getpgrp())"]).stdout)

    assert group() == os.getpgrp()
    with signals.interrupting():
        assert group() == os.getpgrp()
        signals.hold()
        assert group() != os.getpgrp()
        with signals.interruptible():
            assert group() == os.getpgrp()
        assert group() != os.getpgrp()
    assert group() == os.getpgrp()
