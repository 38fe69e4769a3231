"""Fixtures of the real-engine suite: the toolchain, the app's images, one throwaway control plane
with one real node, one workspace, brought up as `make e2e-cluster` brings them up
(e2e/cluster.py `bring_up`), with the suite's fixed model replicas and secrets.

The app's pods run for real on the node (e2e/node/): no KWOK fake node exists, so the scheduler
has nowhere else to put them. The images are built here and pulled by digest from the suite's
registry (e2e/images.py); the database claims are bound to local volumes on the node.

Every process the suite starts is stopped, and every rule and mount it made removed, when the
session ends, whether the tests passed, failed or were interrupted: the same teardown (one
ExitStack, node first, then the control plane, then the images) runs once, at the session's end
or at interpreter exit. A SIGTERM interrupts the session as a Ctrl-C does (KeyboardInterrupt):
the test running unwinds (its load loops stop), no other test runs, and the session's end runs
the teardown, with SIGINT and SIGTERM held back until it is done.
"""

from __future__ import annotations

import atexit
import contextlib
import os
import shutil
import signal
import sys
import tempfile
import threading
from collections.abc import Iterator
from pathlib import Path
from types import FrameType
from typing import Any, Final

import pytest

from e2e import cluster
from e2e.controlplane import ControlPlane, toolchain_bin
from e2e.images import ImageRefs
from e2e.node import Node
from e2e.workspace import PulumiWorkspace
from harness import signals

STACK = cluster.STACK
NAMESPACE = cluster.NAMESPACE
CLAIM = cluster.CLAIM
# The database passwords hold what a URL, a password file and a connection string give a
# meaning to (as `openssl rand -base64` output may): the real pods must take them as they are.
SECRETS = {
    "mlstack:databasePassword": "e2e/database@pass:word%2F+=?",
    "mlstack:databaseOwnerPassword": "e2e/owner@pass:word%2F+=?'\"",
    "mlstack:databaseReplicationPassword": "e2e/replication@pass:word%41+=?'\\",
    "mlstack:databaseRewindPassword": "e2e/rewind@pass:word%41+=?'\\",
    "mlstack:apiKey": "e2e-gateway-api-key",
    "mlstack:secretsDigestKey": "e2e-secrets-digest-key-of-32-characters",
}
API_KEY = SECRETS["mlstack:apiKey"]
TIMINGS: dict[str, float] = {}
# What the scenarios count (requests refused during an event), printed after the timings.
COUNTS: dict[str, int] = {}
# The images the stack deploys, once built (stack_config reads them).
REFS: list[ImageRefs] = []

needs_root = pytest.mark.skipif(
    os.geteuid() != 0, reason="a real node and a Docker engine of the suite's own: root only"
)


# The real node, once up: its S3 server holds the database's backups.
NODES: list[Node] = []


def stack_config(plane: ControlPlane) -> dict[str, Any]:
    """The e2e stack's config (e2e/cluster.py) with the images this session built, backed up to
    the node's S3 server."""
    refs = REFS[0] if REFS else ImageRefs("gateway:e2e", "model:e2e", "database:e2e")
    return cluster.stack_config(plane, refs, s3=NODES[0].s3 if NODES else None)


def secrets() -> dict[str, str]:
    """SECRETS, and the backup repository's keys once the node's S3 server runs."""
    return {**SECRETS, **(cluster.backup_secrets(NODES[0].s3) if NODES else {})}


# What the session started, stopped in reverse order exactly once (e2e/cluster.py `bring_up`
# pushes each part's teardown), by `close_teardown`: at the session's end (the environment
# fixture's) or at interpreter exit, whichever comes first.
TEARDOWN = contextlib.ExitStack()
# The signals that end the session; held back while its teardown runs.
STOPPING: Final = frozenset({signal.SIGINT, signal.SIGTERM})
# Set while `close_teardown` runs.
CLOSING = threading.Event()


def close_teardown() -> None:
    """Run the session's teardown, not re-entered, with SIGINT and SIGTERM blocked until it has
    ended: a signal then cannot cut a node's `down` between two steps (its kubelet stopped, its
    egress guard and kernel settings not yet put back). A signal that came meanwhile asked for
    what has just been done, the session's end: it is taken off, and said on stderr, rather
    than raised out of pytest's own end of the session."""
    if CLOSING.is_set():
        return
    CLOSING.set()
    held = signal.pthread_sigmask(signal.SIG_BLOCK, STOPPING)
    try:
        TEARDOWN.close()
    finally:
        while (came := signal.sigtimedwait(STOPPING, 0)) is not None:
            name = signal.Signals(came.si_signo).name
            print(
                f"e2e: {name} during the session's teardown: held back until it ended",
                file=sys.stderr,
            )
        CLOSING.clear()
        signal.pthread_sigmask(signal.SIG_SETMASK, held)


def on_stop_signal(signum: int, frame: FrameType | None) -> None:
    """SIGINT and SIGTERM during the session: a KeyboardInterrupt, which pytest takes as the end
    of the session (a SystemExit would be one failed test, and the next would run on a cluster
    torn down): the running test unwinds, its `with Load(...)` blocks stop their requests, and
    the session's end runs the teardown once. Nothing while the teardown runs: the signal
    is blocked in the main thread then, and one that another thread took is dropped here."""
    if not CLOSING.is_set():
        raise KeyboardInterrupt(f"{signal.Signals(signum).name} received")


@contextlib.contextmanager
def stop_signals_interrupt() -> Iterator[None]:
    """SIGINT and SIGTERM handled by `on_stop_signal`, the teardown run at interpreter exit, both
    as before once the block ends."""
    atexit.register(close_teardown)
    try:
        with signals.handling(dict.fromkeys(STOPPING, on_stop_signal)):
            yield
    finally:
        atexit.unregister(close_teardown)


@pytest.fixture(scope="session", autouse=True)
def _teardown_on_signal() -> Iterator[None]:
    with stop_signals_interrupt():
        try:
            yield
        finally:
            close_teardown()


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """The image tests first: they run (and stop) an engine of their own on the same image
    cache, which must be done before the session's engine starts."""
    items.sort(key=lambda item: 0 if item.nodeid.startswith("tests/e2e/test_images.py") else 1)


@pytest.fixture(scope="session")
def bin_dir() -> Path:
    return toolchain_bin()


@pytest.fixture(scope="session")
def environment(bin_dir: Path) -> Iterator[cluster.Environment]:
    """The app's images, the control plane and the real node every pod of the app runs on, and
    the workspace with the stack (not deployed): the bring-up of `make e2e-cluster`, with the
    suite's model and secrets, in a folder of its own. Its teardown must leave nothing behind
    and fail nowhere; where it does, the folder stays, with the node's record of the machine
    before its `up` (which a `down` restores), for `python -m e2e.cluster down` to try again."""
    if os.geteuid() != 0:
        pytest.skip("the app's images need the suite's own Docker engine: root only")
    root = Path(tempfile.mkdtemp(prefix="mlstack-e2e-"))
    left: list[str] = []
    try:
        env = cluster.bring_up(TEARDOWN, root, bin_dir, SECRETS, left)
        for what, seconds in env.images.timings.items():
            TIMINGS[f"images: {what}"] = seconds
        for what, seconds in env.node.timings.items():
            TIMINGS[f"node: {what}"] = seconds
        REFS[:] = [env.refs]
        NODES.append(env.node)
        yield env
        for command, runs in sorted(env.workspace.spent.items()):
            TIMINGS[f"pulumi {command}: {len(runs)} runs, in all"] = sum(runs)
    finally:
        try:
            close_teardown()
        finally:
            # Not when a step was interrupted or failed: `left` says so.
            if not left:
                shutil.rmtree(root)
    assert left == [], f"the teardown left: {left}; kept {root} (python -m e2e.cluster down)"


@pytest.fixture(scope="session")
def control_plane(environment: cluster.Environment) -> ControlPlane:
    return environment.plane


@pytest.fixture(scope="session")
def node(environment: cluster.Environment) -> Node:
    """The real node every pod of the app runs on."""
    return environment.node


@pytest.fixture(scope="session")
def workspace(environment: cluster.Environment) -> PulumiWorkspace:
    return environment.workspace


def pytest_terminal_summary(terminalreporter: Any) -> None:
    if TIMINGS:
        terminalreporter.section("e2e wall times")
        for name, seconds in TIMINGS.items():
            terminalreporter.write_line(f"{name}: {seconds:.1f} s")
    if COUNTS:
        terminalreporter.section("e2e counts")
        for name, count in COUNTS.items():
            terminalreporter.write_line(f"{name}: {count}")
