"""Fixtures of the real-engine suite: the toolchain, the app's images, one throwaway control plane
with one real node, one workspace, brought up as `make e2e-cluster` brings them up
(e2e/cluster.py `bring_up`), with the suite's fixed model replicas and secrets.

The app's pods run for real on the node (e2e/node/): no KWOK fake node exists, so the scheduler
has nowhere else to put them. The images are built here and pulled by digest from the suite's
registry (e2e/images.py); the database claims are bound to local volumes on the node.

Every process the suite starts is stopped, and every rule and mount it made removed, when the
session ends, whether the tests passed, failed or were interrupted: the same teardown (one
ExitStack) runs on SIGTERM and at interpreter exit (node first, then the control plane, then the
images).
"""

from __future__ import annotations

import atexit
import contextlib
import os
import shutil
import signal
import tempfile
from collections.abc import Iterator
from pathlib import Path
from types import FrameType
from typing import Any

import pytest

from e2e import cluster
from e2e.controlplane import ControlPlane, toolchain_bin
from e2e.images import ImageRefs
from e2e.node import Node
from e2e.workspace import PulumiWorkspace

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
# pushes each part's teardown): by the environment fixture, on SIGTERM or at interpreter exit,
# whichever comes first.
TEARDOWN = contextlib.ExitStack()


@pytest.fixture(scope="session", autouse=True)
def _teardown_on_signal() -> Iterator[None]:
    atexit.register(TEARDOWN.close)
    previous = signal.getsignal(signal.SIGTERM)

    def on_term(signum: int, frame: FrameType | None) -> None:
        TEARDOWN.close()
        raise SystemExit(128 + signum)

    signal.signal(signal.SIGTERM, on_term)
    try:
        yield
    finally:
        TEARDOWN.close()
        signal.signal(signal.SIGTERM, previous)
        atexit.unregister(TEARDOWN.close)


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
        TEARDOWN.close()
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
