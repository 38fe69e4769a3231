"""The stack secrets mlstack generates: each of components.config.GENERATED_SECRETS that a stack
lacks is drawn afresh and set; one already set is kept, since a new value would change the
database's roles or roll every pod.

    python -m tools.stack_secrets --stack NAME    (`make stack`, before `make up`; the review
                                                  workflow, for a pull request's stack)
"""

from __future__ import annotations

import argparse
import json
import secrets
import sys
from collections.abc import Sequence
from typing import Final

from components.config import GENERATED_SECRETS, SECRETS_DIGEST_KEY_CHARACTERS
from components.stack_file import project_name
from tools.stack import StackError, pulumi

# token_urlsafe's bytes for a value as long as the longest minimum of them (secretsDigestKey's):
# four characters for every three bytes.
SECRET_BYTES: Final = SECRETS_DIGEST_KEY_CHARACTERS * 3 // 4


def generate() -> str:
    """A fresh value for any of GENERATED_SECRETS."""
    return secrets.token_urlsafe(SECRET_BYTES)


def missing(stack: str) -> list[str]:
    """Those of GENERATED_SECRETS the stack has no value for, by their config keys."""
    configured = json.loads(pulumi("config", "--json", stack=stack))
    keys = (f"{project_name()}:{name}" for name in GENERATED_SECRETS)
    return [key for key in keys if key not in configured]


def generate_missing(stack: str) -> list[str]:
    """Set each secret the stack lacks to a fresh value; the keys it set."""
    keys = missing(stack)
    for key in keys:
        print(f"generating {key} for stack {stack}", flush=True)
        pulumi("config", "set", "--secret", key, stack=stack, stdin=generate())
    return keys


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m tools.stack_secrets",
        description=__doc__.split("\n\n")[0] if __doc__ else None,
    )
    parser.add_argument("--stack", required=True)
    args = parser.parse_args(argv)
    try:
        generate_missing(args.stack)
    except StackError as error:
        print(f"stack secrets: error: {error}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
