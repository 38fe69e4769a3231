"""Fixtures of the real-engine suite: the toolchain, one throwaway control plane, one workspace.

Every process the suite starts is stopped when the session ends, whether the tests passed, failed
or were interrupted (the control plane is also stopped on SIGTERM and at interpreter exit).
"""

from __future__ import annotations

import atexit
import signal
import tempfile
from collections.abc import Iterator
from pathlib import Path
from types import FrameType
from typing import Any

import pytest

from e2e.controlplane import ControlPlane, toolchain_bin
from tests.e2e.workspace import PulumiWorkspace

STACK = "e2e"
NAMESPACE = "mlstack-e2e"
SECRETS = {
    "mlstack:databasePassword": "e2e-database-password",
    "mlstack:apiKey": "e2e-gateway-api-key",
}
TIMINGS: dict[str, float] = {}


def stack_config(plane: ControlPlane) -> dict[str, Any]:
    return {
        "mlstack:cluster": {
            "provider": "existing",
            "kubeconfig": str(plane.kubeconfig),
            "context": plane.context,
        },
        "mlstack:images": {
            "build": False,
            "gateway": "registry.example/mlstack/gateway:e2e",
            "model": "registry.example/mlstack/model:e2e",
        },
        "mlstack:gateway": {"replicas": 2, "serviceType": "LoadBalancer"},
        "mlstack:model": {"replicas": 2},
        "mlstack:database": {"replicas": 1, "storageSize": "1Gi"},
    }


@pytest.fixture(scope="session")
def tmp_root() -> Iterator[Path]:
    with tempfile.TemporaryDirectory(prefix="mlstack-e2e-") as tmp:
        yield Path(tmp)


@pytest.fixture(scope="session")
def bin_dir() -> Path:
    return toolchain_bin()


@pytest.fixture(scope="session")
def control_plane(bin_dir: Path, tmp_root: Path) -> Iterator[ControlPlane]:
    plane = ControlPlane(bin_dir=bin_dir, workdir=tmp_root / "cluster")
    atexit.register(plane.stop)
    previous = signal.getsignal(signal.SIGTERM)

    def on_term(signum: int, frame: FrameType | None) -> None:
        plane.stop()
        raise SystemExit(128 + signum)

    signal.signal(signal.SIGTERM, on_term)
    try:
        plane.start()
        # The claim the database's StatefulSet mounts: a provisioner would create its volume.
        plane.add_volume(NAMESPACE, "data-database-0")
        yield plane
    finally:
        plane.stop()
        signal.signal(signal.SIGTERM, previous)
        atexit.unregister(plane.stop)


@pytest.fixture(scope="session")
def workspace(bin_dir: Path, tmp_root: Path, control_plane: ControlPlane) -> PulumiWorkspace:
    ws = PulumiWorkspace(
        bin_dir=bin_dir, root=tmp_root / "pulumi", kubeconfig=control_plane.kubeconfig
    )
    ws.create()
    ws.run("login", f"file://{ws.backend_dir}")
    ws.init_stack(STACK, stack_config(control_plane), SECRETS)
    return ws


def pytest_terminal_summary(terminalreporter: Any) -> None:
    if TIMINGS:
        terminalreporter.section("e2e wall times")
        for name, seconds in TIMINGS.items():
            terminalreporter.write_line(f"{name}: {seconds:.1f} s")
