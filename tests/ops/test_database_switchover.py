"""tools/database_switchover.py (`make switchover`), run for real against stand-ins: a `pulumi`
that answers the stack's config and outputs, and tests/ops/fake_kubectl.py answering for a Patroni
cluster: the StatefulSet, each pod's role label and the Service's endpoints, one state after
another once patronictl accepted the switchover, and what patronictl prints. Both log every call.
Patroni itself runs only on a real cluster.
"""

from __future__ import annotations

import json
import shlex
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from components import database
from harness.make import make_env, run_make
from harness.program import ROOT
from tests.stand_ins import stand_in
from tools import database_switchover as switchover

NAMESPACE = "mlstack-prod"
SELECTOR = {"app.kubernetes.io/name": "database", "app.kubernetes.io/instance": "prod"}
FAKE_KUBECTL = Path(__file__).with_name("fake_kubectl.py")

FAKE_PULUMI = """\
#!{python}
import json, os, sys
from pathlib import Path

here = Path(__file__).parent
args = sys.argv[1:]
if args[:1] == ["whoami"]:
    sys.exit("error: PULUMI_ACCESS_TOKEN must be set for login during non-interactive sessions")
with (here / "pulumi-calls.jsonl").open("a") as log:
    env = {{k: os.environ.get(k) for k in ("PULUMI_BACKEND_URL", "PULUMI_CONFIG_PASSPHRASE")}}
    log.write(json.dumps({{"args": args, **env}}) + "\\n")
stack = json.loads((here / "stack.json").read_text())
if args[1:3] == ["config", "--json"]:
    print(json.dumps(stack["config"]))
elif args[1:4] == ["stack", "output", "--json"]:
    print(json.dumps(stack["outputs"]))
else:
    sys.exit("fake pulumi: unexpected " + " ".join(args))
"""

ACCEPTED = (
    'Current cluster topology\n...\n2026-01-01 00:00:00.00000 Successfully switched over to "x"'
)


def roles(*labels: str) -> dict[str, str]:
    """`roles("primary", "replica")`: database-0 primary, database-1 replica."""
    return {f"database-{index}": label for index, label in enumerate(labels)}


def state(labels: dict[str, str], **endpoints: bool) -> dict[str, Any]:
    """The pods' role labels and the Service's endpoints (`database_1=True`: ready)."""
    return {"roles": labels, "endpoints": {k.replace("_", "-"): v for k, v in endpoints.items()}}


BEFORE = state(roles("primary", "replica", "replica"), database_0=True)
ON_2 = state(roles("replica", "replica", "primary"), database_2=True)
ON_1 = state(roles("replica", "primary", "replica"), database_1=True)


class Fakes:
    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self.kubeconfig = folder / "kubeconfig.yaml"
        self.kubeconfig.write_text("apiVersion: v1\nkind: Config\n")
        stand_in(folder, "pulumi", FAKE_PULUMI.format(python=sys.executable))
        stand_in(folder, "kubectl", f"#!{sys.executable}\n" + FAKE_KUBECTL.read_text())
        self.stack(
            config={"mlstack:cluster": {"objectValue": {
                "provider": "existing", "context": "e2e", "kubeconfig": str(self.kubeconfig)}}},
            outputs={"namespace": NAMESPACE, "kubeconfig": str(self.kubeconfig)},
        )  # fmt: skip
        self.cluster([BEFORE, ON_2])

    def stack(self, config: dict[str, Any], outputs: dict[str, Any]) -> None:
        (self.folder / "stack.json").write_text(json.dumps({"config": config, "outputs": outputs}))

    def cluster(
        self,
        states: list[dict[str, Any]],
        *,
        replicas: int | None = 3,
        patronictl: tuple[int, str, str] = (0, ACCEPTED, ""),
        target_ref: bool = True,
    ) -> None:
        """`states[0]` until patronictl accepts, then each next one per look, the last kept."""
        exit_code, stdout, stderr = patronictl
        switched = {"exit": exit_code, "stdout": f"{stdout}\n", "stderr": f"{stderr}\n"}
        self.write_cluster(
            phases={"running": states},
            replicas=replicas,
            target_ref=target_ref,
            exec={"patronictl": {"*": {**switched, "advances": True}}},
        )

    def write_cluster(self, **fields: Any) -> None:
        """cluster.json for fake_kubectl.py: `fields` over a running cluster of three that stays
        in its first state."""
        cluster = {
            "namespace": NAMESPACE, "selector": SELECTOR, "role_label": database.ROLE_LABEL,
            "replicas": 3, "phase": "running", "at": 0, "advancing": False, "target_ref": True,
            "exec": {}, "configmaps": {}, **fields,
        }  # fmt: skip
        (self.folder / "cluster.json").write_text(json.dumps(cluster))

    def calls(self) -> list[dict[str, Any]]:
        path = self.folder / "kubectl-calls.jsonl"
        lines = path.read_text().splitlines() if path.exists() else []
        return [json.loads(line) for line in lines]

    def assert_every_call_on_the_stack(self) -> None:
        """The stack's kubeconfig file and context, in the stack's namespace, on every call."""
        flags = ["--kubeconfig", str(self.kubeconfig), "--context", "e2e", "--namespace", NAMESPACE]
        for call in self.calls():
            assert call["args"][:6] == flags

    def make(self, *arguments: str) -> subprocess.CompletedProcess[str]:
        """`make *arguments STACK=dev` from the repository, on the fake Pulumi CLI."""
        # No backend of the caller's reaches this run.
        env = make_env("PULUMI_BACKEND_URL", "PULUMI_CONFIG_PASSPHRASE")
        return run_make(*arguments, "STACK=dev", f"PULUMI={self.folder / 'pulumi'}", env=env)

    def pulumi_calls(self) -> list[dict[str, Any]]:
        path = self.folder / "pulumi-calls.jsonl"
        return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []

    def assert_dev_read_only_from_the_local_backend(self) -> None:
        """The Pulumi CLI asked for dev's config and outputs alone (no `stack select --create`,
        no config set), from the local file backend, with dev's empty passphrase."""
        calls = self.pulumi_calls()
        assert [call["args"][1:] for call in calls] == [
            ["config", "--json", "--stack", "dev"],
            ["stack", "output", "--json", "--show-secrets", "--stack", "dev"],
        ]
        for call in calls:
            assert call["PULUMI_BACKEND_URL"] == f"file://{ROOT}/.pulumi-local"
            assert call["PULUMI_CONFIG_PASSPHRASE"] == ""

    def commands(self) -> list[list[str]]:
        """Each kubectl call's command, after the cluster and namespace flags."""
        found = []
        for call in self.calls():
            args = call["args"]
            found.append(args[args.index("--namespace") + 2 :])
        return found

    def execs(self) -> list[list[str]]:
        return [command for command in self.commands() if command[0] == "exec"]

    def looks_after_exec(self) -> int:
        """How many times the tool looked at the endpoints once patronictl had run."""
        commands = self.commands()
        execs = [i for i, command in enumerate(commands) if command[0] == "exec"]
        if not execs:
            return 0
        return sum(1 for command in commands[execs[0] :] if command[1:2] == ["endpointslices"])


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


def test_a_kubeconfig_the_stack_holds_is_handed_to_kubectl_as_a_file_and_removed(
    fakes: Fakes, capsys: pytest.CaptureFixture[str]
) -> None:
    content = "apiVersion: v1\nkind: Config\nclusters: []\n"
    fakes.stack(
        config={"mlstack:cluster": {"value": json.dumps({"provider": "local"})}},
        outputs={"namespace": NAMESPACE, "kubeconfig": content},
    )
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
