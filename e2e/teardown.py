"""The one runner of teardown steps, for the cluster's parts (e2e/cluster.py) and the node's
removals (e2e/node/): every step runs, whatever failed or was interrupted before it; a failing
step is logged and returned as something left behind."""

from __future__ import annotations

from collections.abc import Callable, Iterable


def run_steps(
    steps: Iterable[tuple[str, Callable[[], object]]],
    log: Callable[[str], None],
    failed: list[str] | None = None,
) -> list[str]:
    """Run each named step in order; for each that fails, `log` gets `NAME: ERROR` and `failed`
    (a new list when none is given, returned) `NAME: teardown failed: ERROR` at once.

    A step ended by an interruption (KeyboardInterrupt, SystemExit: an exception that is not an
    Exception) is one that failed too, and the steps after it still run: a Ctrl-C during a
    node's drain must not skip the stop of its kubelet or the removal of its rules. The first
    interruption is raised again once every step has run; `failed` then already holds it, so a
    caller that keeps it (e2e/cluster.py) knows the teardown did not end."""
    if failed is None:
        failed = []
    interrupted: BaseException | None = None
    for name, step in steps:
        try:
            step()
        except Exception as err:  # every step runs, whatever failed before it
            log(f"{name}: {err}")
            failed.append(f"{name}: teardown failed: {err}")
        except BaseException as err:  # raised again below, once every step has run
            what = f"interrupted ({type(err).__name__})"
            log(f"{name}: {what}")
            failed.append(f"{name}: teardown {what}")
            interrupted = interrupted or err
    if interrupted is not None:
        raise interrupted
    return failed
