"""The one runner of teardown steps, for the cluster's parts (e2e/cluster.py) and the node's
removals (e2e/node/): every step runs, whatever failed before it; a failing step is logged and
returned as something left behind."""

from __future__ import annotations

from collections.abc import Callable, Iterable


def run_steps(
    steps: Iterable[tuple[str, Callable[[], object]]], log: Callable[[str], None]
) -> list[str]:
    """Run each named step in order; for each that fails, `log` gets `NAME: ERROR` and the list
    returned `NAME: teardown failed: ERROR` (empty when every step succeeded)."""
    failed = []
    for name, step in steps:
        try:
            step()
        except Exception as err:  # every step runs, whatever failed before it
            log(f"{name}: {err}")
            failed.append(f"{name}: teardown failed: {err}")
    return failed
