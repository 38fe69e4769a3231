"""Pulumi.yaml's config declarations in step with the keys the program reads: every stack secret
is either declared there (those every stack has, which the CLI then requires, encrypted) or named
in its comments (those a person gives only to the stacks that use them)."""

from __future__ import annotations

from typing import Any, Final

import pytest
import yaml

from components.config import GENERATED_SECRETS, KNOWN_KEYS, SECRET_KEYS
from components.stack_file import project_name
from harness.program import TEST_SECRETS
from tests.paths import ROOT
from tests.unit.configs import config_error, dev_with

PROJECT_FILE: Final = ROOT / "Pulumi.yaml"


def declarations() -> dict[str, dict[str, Any]]:
    """Pulumi.yaml's `config:`, by key without the project's namespace. The CLI puts a key
    declared without one in the project's (Pulumi.yaml's `name`), and refuses a type for a key of
    any other: every declaration is the program's."""
    document = yaml.safe_load(PROJECT_FILE.read_text())
    project = project_name()
    declared = {}
    for key, value in document["config"].items():
        namespace, _, name = key.rpartition(":")
        assert namespace in ("", project), f"{key}: not in the project's namespace"
        declared[name] = value
    return declared


def comments() -> str:
    """Pulumi.yaml's comment lines, without their `#`."""
    lines = PROJECT_FILE.read_text().splitlines()
    return "\n".join(line.lstrip()[1:] for line in lines if line.lstrip().startswith("#"))


def test_every_declared_key_is_one_the_program_reads() -> None:
    unknown = [key for key in declarations() if key not in KNOWN_KEYS]
    assert unknown == []


def test_the_secrets_every_stack_has_are_declared_secret_and_required() -> None:
    """GENERATED_SECRETS, which `make stack` draws for every stack: declared without a default
    (the CLI refuses a plaintext default for a secret, and then requires the key of each stack)."""
    declared = declarations()
    secret = {key for key, spec in declared.items() if spec.get("secret")}
    assert secret == set(GENERATED_SECRETS)
    for key in GENERATED_SECRETS:
        spec = declared[key]
        assert spec["type"] == "string", key
        assert "default" not in spec, key
        assert spec.get("description"), key


def test_a_declared_key_that_is_not_a_secret_has_a_default() -> None:
    """Without one the CLI would require the key of every stack, which the program does not."""
    for key, spec in declarations().items():
        if not spec.get("secret"):
            assert "default" in spec, key
            assert key not in SECRET_KEYS, key


def test_the_secrets_a_person_gives_are_named_where_the_declarations_are() -> None:
    given = [key for key in SECRET_KEYS if key not in GENERATED_SECRETS]
    assert given, "SECRET_KEYS holds the generated secrets only"
    text = comments()
    unnamed = [key for key in given if key not in text]
    assert unnamed == []


def test_the_harness_gives_the_program_every_declared_secret() -> None:
    """The mocks run the program as the CLI would: with each secret the project declares."""
    project = project_name()
    declared = {f"{project}:{key}" for key, spec in declarations().items() if spec.get("secret")}
    assert declared == set(TEST_SECRETS)


@pytest.mark.parametrize("key", GENERATED_SECRETS)
def test_a_declared_secret_is_one_the_program_requires(key: str) -> None:
    """dev (which backs up, so the cipher key is needed too) without the secret stops the program
    with that key named: the declaration requires no more than the program does."""
    config = {**TEST_SECRETS, **dev_with()}
    del config[f"{project_name()}:{key}"]
    message = config_error(config, with_secrets=False)
    assert message.startswith(f"{project_name()}:{key} is missing: "), message
