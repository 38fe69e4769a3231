"""The program runner the unit, policy and ops suites share (harness/program.py)."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest
import yaml

from harness import program
from harness.program import TEST_SECRETS, run_program


def test_the_program_runs_after_asyncio_run_left_no_event_loop() -> None:
    """`pytest` at the root runs the services' tests, which call asyncio.run, in the same process
    as the program's: asyncio.run leaves the thread without an event loop, and Pulumi's mocks
    need one."""

    async def nothing() -> None:
        return None

    asyncio.run(nothing())
    run = run_program("dev")
    assert run.resources


def test_a_stack_file_with_the_secrets_make_up_wrote_runs_with_the_test_secrets(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """After the README's `make up`, Pulumi.dev.yaml holds the stack's secrets, encrypted: the
    tests run the program with the test secrets still, not with the ciphertext."""
    document = yaml.safe_load((program.ROOT / "Pulumi.dev.yaml").read_text())
    for key in TEST_SECRETS:
        document["config"][key] = {"secure": "v1:ciphertext-only-the-cli-can-read"}
    (tmp_path / "Pulumi.dev.yaml").write_text(yaml.safe_dump(document))
    monkeypatch.setattr(program, "ROOT", tmp_path)
    assert not set(program.stack_config("dev")) & set(TEST_SECRETS)
    run = run_program("dev")
    gateway = run.one("Secret", "gateway").inputs["stringData"]
    assert gateway["api-key"] == TEST_SECRETS["mlstack:apiKey"]


def test_urns_are_the_engine_s_with_what_aliases_carry_over(tmp_path: Path) -> None:
    """A resource's type qualified by every ancestor's but the stack's, and as former URNs its
    aliases' and those its parent's aliases give it (tests/unit/test_deployed_stacks.py)."""
    source = tmp_path / "__main__.py"
    source.write_text(
        "import pulumi\n"
        "class Part(pulumi.ComponentResource):\n"
        "    def __init__(self, name, opts=None):\n"
        "        super().__init__('test:index:Part', name, None, opts)\n"
        "outer = Part('outer', pulumi.ResourceOptions(aliases=[pulumi.Alias(name='old')]))\n"
        "middle = Part('middle', pulumi.ResourceOptions(parent=outer))\n"
        "moved = pulumi.ResourceOptions(parent=middle, aliases=[pulumi.Alias(parent=None)])\n"
        "Part('inner', moved)\n"
    )
    run = run_program("dev", program=source)
    found = {r.name: (r.urn, r.former_urns) for r in run.resources}
    prefix = f"urn:pulumi:dev::{program.PROJECT}::"
    part = "test:index:Part"
    assert found == {
        "outer": (f"{prefix}{part}::outer", [f"{prefix}{part}::old"]),
        "middle": (f"{prefix}{part}${part}::middle", []),
        "inner": (
            f"{prefix}{part}${part}${part}::inner",
            [f"{prefix}{part}::inner"],
        ),
    }
