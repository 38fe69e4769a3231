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
