"""`python -m tests.unit.deployed --write`: record again what each stack file's deployed stack
holds (tests/unit/deployed/__init__.py), after a change that is meant to replace or delete it.
Without `--write`: say what a `pulumi up` of this program would lose on each, as the test does."""

from __future__ import annotations

import argparse
import sys

from components.stack_file import stacks
from harness.program import run_program
from tests.unit import deployed


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tests.unit.deployed", description=__doc__)
    parser.add_argument("--write", action="store_true", help="write the records again")
    args = parser.parse_args(argv)
    if args.write:
        for path in deployed.write():
            print(f"wrote {path.relative_to(deployed.HERE.parents[2])}")
        return 0
    found = [
        line
        for stack in stacks()
        for line in deployed.differences(stack, deployed.load(stack), run_program(stack))
    ]
    print("\n".join(found) or "every recorded resource and field is as recorded")
    return 1 if found else 0


if __name__ == "__main__":
    sys.exit(main())
