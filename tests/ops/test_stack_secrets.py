"""tools/stack_secrets.py and `make stack`, against a stand-in Pulumi CLI that keeps the stack's
config in a JSON file; and the values it draws, through the program under Pulumi's mocks."""

from __future__ import annotations

import json
import string
from pathlib import Path

import pytest

from components.config import GENERATED_SECRETS, SECRETS_DIGEST_KEY_CHARACTERS
from harness.make import make_env, run_make
from harness.program import run_program, stack_config
from tests.copies import copy_project, run_in
from tests.stand_ins import PULUMI_CALLS, logged_calls, pulumi_stand_in
from tools import stack_secrets

# The stack's config in a JSON file (STAND_IN_CONFIG): its keys, all secret, and `config set
# --secret` of a value on stdin, refused as for a wrong passphrase when STAND_IN_REFUSE_SET is set.
CONFIG_ANSWERS = """\
path = os.environ["STAND_IN_CONFIG"]
config = json.load(open(path)) if os.path.exists(path) else {}
if args[:3] == ["--non-interactive", "config", "--json"]:
    print(json.dumps({key: {"secret": True} for key in config}))
elif args[:4] == ["--non-interactive", "config", "set", "--secret"]:
    if os.environ.get("STAND_IN_REFUSE_SET"):
        sys.exit("error: incorrect passphrase")
    config[args[4]] = sys.stdin.read()
    json.dump(config, open(path, "w"))
"""
URL_SAFE = set(string.ascii_letters + string.digits + "-_")
GENERATED_KEYS = [f"mlstack:{name}" for name in GENERATED_SECRETS]


class StandIn:
    def __init__(self, folder: Path, monkeypatch: pytest.MonkeyPatch) -> None:
        self.binary = pulumi_stand_in(folder, CONFIG_ANSWERS)
        self.log = folder / PULUMI_CALLS
        self.config_file = folder / "config.json"
        self.env = {
            "PULUMI": str(self.binary),
            "STAND_IN_CONFIG": str(self.config_file),
        }
        for name, value in self.env.items():
            monkeypatch.setenv(name, value)

    def config(self) -> dict[str, str]:
        found: dict[str, str] = json.loads(self.config_file.read_text())
        return found

    def calls(self) -> list[list[str]]:
        return [call["args"] for call in logged_calls(self.log)]


@pytest.fixture
def cli(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> StandIn:
    return StandIn(tmp_path, monkeypatch)


def test_a_new_stack_gets_every_generated_secret_out_of_the_command_line(
    cli: StandIn, capsys: pytest.CaptureFixture[str]
) -> None:
    assert stack_secrets.main(["--stack", "pr-7"]) == 0
    config = cli.config()
    assert sorted(config) == sorted(GENERATED_KEYS)
    values = list(config.values())
    assert len(set(values)) == len(values), "each secret is drawn on its own"
    for value in values:
        assert len(value) >= SECRETS_DIGEST_KEY_CHARACTERS and set(value) <= URL_SAFE, value
    # The values travel on stdin: a command line is visible to every user of the machine.
    assert not any(value in arg for call in cli.calls() for arg in call for value in values)
    assert all(call[-2:] == ["--stack", "pr-7"] for call in cli.calls())
    printed = capsys.readouterr().out.splitlines()
    assert printed == [f"generating {key} for stack pr-7" for key in GENERATED_KEYS]


def test_a_renamed_copy_gets_its_secrets_in_its_own_namespace(cli: StandIn, tmp_path: Path) -> None:
    """Where its Pulumi.yaml declares them, and so where the CLI requires them and the program
    reads them (README, "Copying mlstack")."""
    copy = copy_project(tmp_path / "project", "mlplatform")
    ran = run_in(copy, "-m", "tools.stack_secrets", "--stack", "dev", **cli.env)
    assert ran.returncode == 0, ran.stderr
    assert sorted(cli.config()) == sorted(f"mlplatform:{name}" for name in GENERATED_SECRETS)


def test_a_secret_the_stack_has_is_kept(cli: StandIn) -> None:
    cli.config_file.write_text(json.dumps({"mlstack:apiKey": "chosen-by-a-person"}))
    assert stack_secrets.generate_missing("dev") == [
        k for k in GENERATED_KEYS if k != "mlstack:apiKey"
    ]
    assert cli.config()["mlstack:apiKey"] == "chosen-by-a-person"
    assert stack_secrets.generate_missing("dev") == []


def test_a_cli_failure_is_one_line_naming_the_command(
    cli: StandIn, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("STAND_IN_REFUSE_SET", "1")
    assert stack_secrets.main(["--stack", "dev"]) == 1
    error = capsys.readouterr().err
    assert error.startswith("stack secrets: error: `")
    assert "config set --secret mlstack:databasePassword --stack dev` exited 1" in error
    assert error.rstrip().endswith("error: incorrect passphrase")


def test_make_stack_selects_the_stack_then_generates_what_it_lacks(cli: StandIn) -> None:
    env = {**make_env("PULUMI_BACKEND_URL"), **cli.env}
    result = run_make("stack", "STACK=dev", f"PULUMI={cli.binary}", env=env)
    assert result.returncode == 0, result.stderr
    calls = cli.calls()
    assert calls[0] == ["stack", "select", "--create", "dev"]
    assert sorted(cli.config()) == sorted(GENERATED_KEYS)
    assert run_make("stack", "STACK=dev", f"PULUMI={cli.binary}", env=env).returncode == 0
    assert len(cli.calls()) == len(calls) + 2, "the second run selects and reads, sets nothing"


def test_the_drawn_secrets_are_what_the_program_takes() -> None:
    drawn = {key: stack_secrets.generate() for key in GENERATED_KEYS}
    run = run_program("dev", {**stack_config("dev"), **drawn}, with_secrets=False)
    assert run.one("Secret", "gateway").inputs["stringData"]["api-key"] == drawn["mlstack:apiKey"]
