"""Fixtures of the real-engine suite: the toolchain, the app's images, one throwaway control plane
with one real node, one workspace.

The app's pods run for real on the node (e2e/node.py): no KWOK fake node exists, so the scheduler
has nowhere else to put them. The images are built here and pulled by digest from the suite's
registry (e2e/images.py); the database claim is bound to a local volume on the node.

Every process the suite starts is stopped, and every rule and mount it made removed, when the
session ends, whether the tests passed, failed or were interrupted: the same teardown runs on
SIGTERM and at interpreter exit (node first, then the control plane, then the images).
"""

from __future__ import annotations

import atexit
import os
import signal
import sys
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from types import FrameType
from typing import Any

import pytest

from e2e import cluster
from e2e.controlplane import ControlPlane, toolchain_bin
from e2e.images import ImageRefs, Images
from e2e.node import Node
from e2e.workspace import PulumiWorkspace

STACK = cluster.STACK
NAMESPACE = cluster.NAMESPACE
CLAIM = cluster.CLAIM
# The database passwords hold what a URL, a password file and a connection string give a
# meaning to (as `openssl rand -base64` output may): the real pods must take them as they are.
SECRETS = {
    "mlstack:databasePassword": "e2e/database@pass:word%2F+=?",
    "mlstack:databaseReplicationPassword": "e2e/replication@pass:word%41+=?'\\",
    "mlstack:apiKey": "e2e-gateway-api-key",
    "mlstack:secretsDigestKey": "e2e-secrets-digest-key-of-32-characters",
}
API_KEY = SECRETS["mlstack:apiKey"]
TIMINGS: dict[str, float] = {}
# The images the stack deploys, once built (stack_config reads them).
REFS: list[ImageRefs] = []

needs_root = pytest.mark.skipif(
    os.geteuid() != 0, reason="a real node and a Docker engine of the suite's own: root only"
)


def stack_config(plane: ControlPlane) -> dict[str, Any]:
    """The e2e stack's config (e2e/cluster.py) with the images this session built."""
    refs = REFS[0] if REFS else ImageRefs("gateway:e2e", "model:e2e", "database:e2e")
    return cluster.stack_config(plane, refs)


class Teardown:
    """What the session started, stopped in reverse order exactly once: by its fixture, on
    SIGTERM or at interpreter exit, whichever comes first."""

    def __init__(self) -> None:
        self.steps: list[tuple[str, Callable[[], object]]] = []

    def push(self, name: str, step: Callable[[], object]) -> None:
        self.steps.append((name, step))

    def pop(self, name: str) -> None:
        for i in range(len(self.steps) - 1, -1, -1):
            if self.steps[i][0] == name:
                _, step = self.steps.pop(i)
                step()
                return

    def run_all(self) -> None:
        while self.steps:
            name, step = self.steps.pop()
            try:
                step()
            except Exception as err:  # every step runs, whatever failed before it
                print(f"e2e teardown: {name}: {err}", file=sys.stderr)


TEARDOWN = Teardown()


@pytest.fixture(scope="session", autouse=True)
def _teardown_on_signal() -> Iterator[None]:
    atexit.register(TEARDOWN.run_all)
    previous = signal.getsignal(signal.SIGTERM)

    def on_term(signum: int, frame: FrameType | None) -> None:
        TEARDOWN.run_all()
        raise SystemExit(128 + signum)

    signal.signal(signal.SIGTERM, on_term)
    try:
        yield
    finally:
        TEARDOWN.run_all()
        signal.signal(signal.SIGTERM, previous)
        atexit.unregister(TEARDOWN.run_all)


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """The image tests first: they run (and stop) an engine of their own on the same image
    cache, which must be done before the session's engine starts."""
    items.sort(key=lambda item: 0 if item.nodeid.startswith("tests/e2e/test_images.py") else 1)


@pytest.fixture(scope="session")
def tmp_root() -> Iterator[Path]:
    with tempfile.TemporaryDirectory(prefix="mlstack-e2e-") as tmp:
        yield Path(tmp)


@pytest.fixture(scope="session")
def bin_dir() -> Path:
    return toolchain_bin()


@pytest.fixture(scope="session")
def app_images(tmp_root: Path) -> Iterator[ImageRefs]:
    """The app's images, built and served by digest from the registry on 127.0.0.1."""
    if os.geteuid() != 0:
        pytest.skip("the app's images need the suite's own Docker engine: root only")
    images = Images(tmp_root / "images")
    TEARDOWN.push("images", images.down)
    refs = images.up()
    # Only the registry is needed from now on: the engine's memory goes to the node's pods.
    images.engine.stop()
    for what, seconds in images.timings.items():
        TIMINGS[f"images: {what}"] = seconds
    REFS[:] = [refs]
    try:
        yield refs
    finally:
        TEARDOWN.pop("images")


@pytest.fixture(scope="session")
def control_plane(bin_dir: Path, tmp_root: Path, app_images: ImageRefs) -> Iterator[ControlPlane]:
    plane = ControlPlane(bin_dir=bin_dir, workdir=tmp_root / "cluster", fake_nodes=0)
    TEARDOWN.push("control plane", plane.stop)
    try:
        plane.start()
        yield plane
    finally:
        TEARDOWN.pop("control plane")


@pytest.fixture(scope="session")
def node(control_plane: ControlPlane, tmp_root: Path) -> Iterator[Node]:
    """The real node every pod of the app runs on; its teardown must leave nothing behind."""
    registry = Images(tmp_root / "images").registry.address
    real = Node(control_plane, registries=[registry])
    left: list[str] = []
    TEARDOWN.push("node", lambda: left.extend(real.down()))
    try:
        real.up()
        for what, seconds in real.timings.items():
            TIMINGS[f"node: {what}"] = seconds
        # The claims the database's StatefulSets mount: a provisioner would create their volumes.
        for claim in cluster.CLAIMS:
            real.add_volume(NAMESPACE, claim)
        yield real
    finally:
        TEARDOWN.pop("node")
    assert left == [], f"the node's teardown left: {left}"


@pytest.fixture(scope="session")
def workspace(bin_dir: Path, tmp_root: Path, node: Node) -> PulumiWorkspace:
    plane = node.plane
    ws = PulumiWorkspace(bin_dir=bin_dir, root=tmp_root / "pulumi", kubeconfig=plane.kubeconfig)
    ws.create()
    ws.run("login", f"file://{ws.backend_dir}")
    ws.init_stack(STACK, stack_config(plane), SECRETS)
    return ws


def pytest_terminal_summary(terminalreporter: Any) -> None:
    if TIMINGS:
        terminalreporter.section("e2e wall times")
        for name, seconds in TIMINGS.items():
            terminalreporter.write_line(f"{name}: {seconds:.1f} s")
