"""Stack config values the unit tests put in place of a stack file's own, the builders of a
stack's config with them, and the program run on a config that must fail: the one line it logs."""

from __future__ import annotations

from typing import Any, Final

import pytest

from components.config import USER_TOLD_EXIT_CODE
from harness.program import ProgramExitError, run_program, stack_config

# `mlstack:cluster` for a cluster the program does not make: a kind cluster's kubeconfig context.
EXISTING: Final[dict[str, Any]] = {"provider": "existing", "context": "kind-mlstack"}


def dev_with(**overrides: Any) -> dict[str, Any]:
    """The dev stack's config with some `mlstack:` keys replaced (None removes one)."""
    config = stack_config("dev")
    for key, value in overrides.items():
        full = f"mlstack:{key}"
        if value is None:
            config.pop(full, None)
        else:
            config[full] = value
    return config


def config_exit(config: dict[str, Any], **kwargs: Any) -> ProgramExitError:
    with pytest.raises(ProgramExitError) as raised:
        run_program("dev", config, **kwargs)
    return raised.value


def config_error(config: dict[str, Any], **kwargs: Any) -> str:
    """The one line a config mistake logs; the program then exits, telling the CLI so."""
    exited = config_exit(config, **kwargs)
    assert exited.code == USER_TOLD_EXIT_CODE
    assert len(exited.errors) == 1, "a config mistake is reported once"
    (message,) = exited.errors
    assert "\n" not in message, "a config mistake is reported on one line"
    return message
