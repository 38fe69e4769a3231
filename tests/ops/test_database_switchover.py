"""tools/database_switchover.py (`make switchover`), run for real against stand-ins: a `pulumi`
that answers the stack's config and outputs, and tests/ops/fake_kubectl.py answering for a Patroni
cluster: the StatefulSet, each pod's role label and the Service's endpoints, one state after
another once patronictl accepted the switchover, and what patronictl prints. Both log every call.
Patroni itself runs only on a real cluster.
"""

from __future__ import annotations

import json
import shlex
from pathlib import Path
from typing import Any

import pytest

from tests.ops.stack_fakes import BEFORE, MADE_CLUSTERS, NAMESPACE, ON_2, Fakes, roles, state
from tools import database_switchover as switchover

ON_1 = state(roles("replica", "primary", "replica"), database_1=True)


@pytest.fixture
def fakes(cli_folder: Path, monkeypatch: pytest.MonkeyPatch) -> Fakes:
    # The wait's poll interval only: the tool's bounds and checks stay as they are.
    monkeypatch.setattr(switchover, "POLL_SECONDS", 0.01)
    return Fakes(cli_folder)


def run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = switchover.main(["--stack", "prod", *argv])
    out, err = capsys.readouterr()
    return code, out, err


@pytest.mark.parametrize(("text", "index"), [("1", 1), ("database-2", 2), ("4", 4)])
def test_to_is_an_instance_number_or_its_pod_name(text: str, index: int) -> None:
    assert switchover.instance(text) == index


@pytest.mark.parametrize("text", ["x", "database-", "db-1", "-1", "database-1-0", "1.0", ""])
def test_any_other_to_is_one_usage_error(
    text: str, capsys: pytest.CaptureFixture[str], fakes: Fakes
) -> None:
    with pytest.raises(SystemExit) as exited:
        switchover.main(["--stack", "prod", "--to", text])
    assert exited.value.code == 2
    err = capsys.readouterr().err
    assert f"argument --to: {text!r} is no instance: give its number (1) or its pod's name" in err
    assert fakes.calls() == []


def test_the_patronictl_command() -> None:
    assert switchover.patronictl_switchover("database-0", "database-2") == [
        "patronictl", "switchover", "--leader", "database-0", "--candidate", "database-2",
        "--force", "database",
    ]  # fmt: skip
    assert switchover.patronictl_switchover("database-1", None) == [
        "patronictl", "switchover", "--leader", "database-1", "--force", "database",
    ]  # fmt: skip


def test_switchover_to_an_instance_runs_patronictl_in_the_primary_and_waits_for_the_service(
    fakes: Fakes, capsys: pytest.CaptureFixture[str]
) -> None:
    # As Patroni goes: the old primary steps down, the candidate takes the leader lock, the
    # Service's endpoint moves, the new primary's pod turns ready behind it, the old primary's
    # pod is labelled a replica.
    fakes.cluster([
        BEFORE,
        state(roles("replica", "replica", "replica")),
        state(roles("replica", "replica", "primary"), database_0=False),
        state(roles("primary", "replica", "primary"), database_2=True),
        state(roles("replica", "replica", "primary"), database_2=False),
        state(roles("", "replica", "primary"), database_2=True),
        ON_2,
    ])  # fmt: skip
    code, out, err = run(capsys, "--to", "2")
    assert (code, err) == (0, "")
    assert out.startswith("switchover: database-0 → database-2 in ") and out.endswith(" s\n")
    assert out.count("\n") == 1
    assert fakes.execs() == [
        ["exec", "database-0", "--container", "postgres", "--",
         "patronictl", "switchover", "--leader", "database-0", "--candidate", "database-2",
         "--force", "database"],
    ]  # fmt: skip
    # Not done at any state before the last; done at the first look at the last.
    assert fakes.looks_after_exec() == 6
    fakes.assert_every_call_on_the_stack()


def test_with_no_instance_patroni_picks_one(
    fakes: Fakes, capsys: pytest.CaptureFixture[str]
) -> None:
    fakes.cluster([BEFORE, ON_1])
    code, out, _ = run(capsys)
    assert code == 0
    assert out.startswith("switchover: database-0 → database-1 in ")
    [command] = fakes.execs()
    assert command[5:] == [
        "patronictl",
        "switchover",
        "--leader",
        "database-0",
        "--force",
        "database",
    ]


def test_endpoints_without_a_pod_reference_are_matched_by_address(
    fakes: Fakes, capsys: pytest.CaptureFixture[str]
) -> None:
    """As kube-controller-manager mirrors an Endpoints object that names addresses only."""
    fakes.cluster(
        [BEFORE, state(roles("replica", "primary", "replica"), database_0=True), ON_1],
        target_ref=False,
    )
    code, out, _ = run(capsys, "--to", "database-1")
    assert code == 0, out
    assert fakes.looks_after_exec() == 2


@pytest.mark.parametrize("kind", list(MADE_CLUSTERS))
def test_a_kubeconfig_the_stack_holds_is_handed_to_kubectl_as_a_file_and_removed(
    kind: str, fakes: Fakes, capsys: pytest.CaptureFixture[str]
) -> None:
    # eks: pulumi-eks's one line of JSON, a file's content all the same.
    content = fakes.made_cluster(kind)
    code, _, err = run(capsys, "--to", "2")
    assert code == 0, err
    calls = fakes.calls()
    assert {call["kubeconfig"] for call in calls} == {content}
    written = Path(calls[0]["args"][1])
    assert not written.exists()
    # A cluster the stack made has its own current context.
    assert all("--context" not in call["args"] for call in calls)


@pytest.mark.parametrize(
    ("cluster", "argv", "message"),
    [
        ((1, [state(roles("primary"), database_0=True)]), [],
         "stack prod has one database instance: there is no replica to hand the primary role to"),
        ((3, [BEFORE]), ["--to", "3"],
         "--to 3: there is no database-3; the instances are database-0 to database-2"),
        ((3, [BEFORE]), ["--to", "database-0"], "--to 0: database-0 is the primary already"),
        ((3, [state(roles("replica", "replica", "replica"))]), ["--to", "1"],
         "database has no pod labelled mlstack/database-role=primary"),
        ((3, [state(roles("primary", "primary", "replica"))]), [],
         "database has 2 pods (database-0, database-1) labelled mlstack/database-role=primary"),
        ((None, [BEFORE]), [], f"there is no StatefulSet database in {NAMESPACE}"),
    ],
)  # fmt: skip
def test_impossible_requests_are_one_error_and_run_no_patronictl(
    cluster: tuple[int | None, list[dict[str, Any]]],
    argv: list[str],
    message: str,
    fakes: Fakes,
    capsys: pytest.CaptureFixture[str],
) -> None:
    replicas, states = cluster
    fakes.cluster(states, replicas=replicas)
    code, out, err = run(capsys, *argv)
    assert (code, out) == (1, "")
    assert err.startswith(f"switchover: error: {message}")
    assert err.count("\n") == 1
    assert fakes.execs() == []


def test_a_stack_that_is_not_deployed_is_one_error(
    fakes: Fakes, capsys: pytest.CaptureFixture[str]
) -> None:
    fakes.stack(config={}, outputs={})
    code, _, err = run(capsys)
    assert code == 1
    assert err == "switchover: error: stack prod has no namespace output: is it deployed?\n"
    assert fakes.calls() == []


@pytest.mark.parametrize(
    ("patronictl", "detail"),
    [
        # patronictl's own refusal: click's "Error: ..." and exit 1.
        ((1, "Current cluster topology\n...",
          "Error: Member database-2 does not exist in cluster database or is tagged as nofailover"),
         "Error: Member database-2 does not exist in cluster database or is tagged as nofailover"),
        # Patroni's API turning it down: patronictl prints it and exits 0.
        ((0, "Current cluster topology\n...\n"
          "Switchover failed, details: 412, candidate name does not match with sync_standby", ""),
         "Switchover failed, details: 412, candidate name does not match with sync_standby; "
         "Patroni hands over only to the synchronous standby (Sync Standby in `patronictl "
         "list`): give that instance, or none"),
        ((0, "Switchover failed, details: 503, Switchover failed", ""),
         "Switchover failed, details: 503, Switchover failed"),
        # kubectl exec itself failing.
        ((1, "", 'Error from server (NotFound): pods "database-0" not found'),
         'Error from server (NotFound): pods "database-0" not found'),
    ],
)  # fmt: skip
def test_a_refusal_is_one_error_with_patronis_reason_and_no_wait(
    patronictl: tuple[int, str, str],
    detail: str,
    fakes: Fakes,
    capsys: pytest.CaptureFixture[str],
) -> None:
    fakes.cluster([BEFORE, ON_2], patronictl=patronictl)
    code, out, err = run(capsys, "--to", "2")
    assert (code, out) == (1, "")
    assert err == f"switchover: error: patronictl switchover in database-0 refused: {detail}\n"
    assert fakes.looks_after_exec() == 0


def test_with_no_synchronous_standby_the_refusal_says_to_wait_for_one(
    fakes: Fakes, capsys: pytest.CaptureFixture[str]
) -> None:
    """No instance asked, and none in sync (the standby restarted and is catching up): giving
    an instance would not help, only waiting does."""
    refused = (
        "Switchover failed, details: 412, switchover is not possible: can not find sync_standby"
    )
    fakes.cluster([BEFORE, ON_1], patronictl=(0, f"Current cluster topology\n...\n{refused}", ""))
    code, out, err = run(capsys)
    assert (code, out) == (1, "")
    assert err == (
        f"switchover: error: patronictl switchover in database-0 refused: {refused}; no standby "
        "is synchronous now (one that is catching up, or none running): run it again once "
        "`patronictl list` shows a Sync Standby\n"
    )
    assert fakes.looks_after_exec() == 0


# What patronictl prints, exiting 0, when Patroni wrote the switchover into its state but did
# not see it end within its API's 20 s poll (a primary slow to shut down): it goes on after.
UNKNOWN = (
    "Current cluster topology\n...\nSwitchover failed, details: 503, Switchover status unknown"
)


def test_a_switchover_patroni_has_not_seen_end_yet_is_waited_for(
    fakes: Fakes, capsys: pytest.CaptureFixture[str]
) -> None:
    fakes.cluster([BEFORE, state(roles("replica", "replica", "replica")), ON_2],
                  patronictl=(0, UNKNOWN, ""))  # fmt: skip
    code, out, err = run(capsys, "--to", "2")
    assert (code, err) == (0, "")
    assert out.startswith("switchover: database-0 → database-2 in ")
    assert fakes.looks_after_exec() == 2


def test_a_switchover_of_unknown_status_that_never_shows_names_what_patroni_said(
    fakes: Fakes, capsys: pytest.CaptureFixture[str]
) -> None:
    fakes.cluster([BEFORE], patronictl=(0, UNKNOWN, ""))
    code, out, err = run(capsys, "--to", "2", "--timeout", "0.2")
    assert (code, out) == (1, "")
    assert err.startswith(
        "switchover: error: Patroni took the switchover from database-0 to database-2 "
        "(Switchover failed, details: 503, Switchover status unknown), but 0.2 s later the pods "
        "and the Service show database-0 primary, database-1 replica, database-2 replica; "
    )


def test_a_switchover_that_does_not_show_is_a_timeout_naming_what_was_seen(
    fakes: Fakes, capsys: pytest.CaptureFixture[str]
) -> None:
    # Asked for database-2, the cluster shows database-1 as the primary: never the one asked.
    fakes.cluster([BEFORE, ON_1])
    code, out, err = run(capsys, "--to", "2", "--timeout", "0.2")
    assert (code, out) == (1, "")
    # The command to look with is on the stack's cluster: its kubeconfig, context and namespace.
    patronictl_list = shlex.join([
        "kubectl", "--kubeconfig", str(fakes.kubeconfig), "--context", "e2e",
        "--namespace", NAMESPACE, "exec", "database-0", "--container", "postgres", "--",
        "patronictl", "list",
    ])  # fmt: skip
    assert err == (
        "switchover: error: patronictl accepted the switchover from database-0 to database-2, "
        "but 0.2 s later the pods and the Service show database-0 replica, database-1 primary, "
        f"database-2 replica; Service database -> database-1; see `{patronictl_list}`\n"
    )
    assert fakes.looks_after_exec() >= 2


def test_make_switchover_passes_to_and_the_stack_backend(fakes: Fakes) -> None:
    fakes.cluster([BEFORE, ON_1])
    result = fakes.make("switchover", "TO=database-1")
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout.splitlines()[-1].startswith("switchover: database-0 → database-1 in ")
    [command] = fakes.execs()
    assert command[5:9] == ["patronictl", "switchover", "--leader", "database-0"]
    assert command[9:11] == ["--candidate", "database-1"]
    fakes.assert_dev_read_only_from_the_local_backend()


def test_the_command_to_look_with_reads_a_kubeconfig_the_stack_holds_from_the_stack(
    fakes: Fakes, capsys: pytest.CaptureFixture[str]
) -> None:
    # The copy the switchover used is removed when it ends: the command fetches the stack's own.
    fakes.stack(
        config={"mlstack:cluster": {"value": json.dumps({"provider": "local"})}},
        outputs={"namespace": NAMESPACE, "kubeconfig": "apiVersion: v1\nkind: Config\n"},
    )
    fakes.cluster([BEFORE, ON_1])
    code, _, err = run(capsys, "--to", "2", "--timeout", "0.2")
    assert code == 1
    fetched = "pulumi stack output kubeconfig --show-secrets --stack prod"
    assert f"see `kubectl --kubeconfig <({fetched}) --namespace {NAMESPACE} exec" in err
