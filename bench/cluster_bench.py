"""What the benchmarks against a cluster `make e2e-cluster` left running share: their command
line, their handles on it (control plane, node, Pulumi workspace) and the conditions a result is
written with."""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
from pathlib import Path
from typing import Any, Final

from bench import RESULTS
from e2e.cluster import LocalCluster, no_cluster
from e2e.controlplane import ControlPlane
from e2e.node import Node
from e2e.workspace import PulumiWorkspace

# Where `make e2e-cluster` leaves the cluster (mk/e2e.mk's E2E_CLUSTER_DIR; tests/ops checks the
# two agree): make passes its own, a benchmark run by hand finds it here.
DEFAULT_DIR: Final = Path("/tmp/mlstack-e2e-cluster")


def parser(prog: str, description: str | None = None) -> argparse.ArgumentParser:
    """A cluster benchmark's command line: `--dir`, the cluster's folder."""
    command_line = argparse.ArgumentParser(prog=prog, description=description)
    command_line.add_argument("--dir", type=Path, default=DEFAULT_DIR, help="the cluster's folder")
    return command_line


def arguments(prog: str) -> argparse.Namespace:
    """The command line's `--dir` and `--runs` (how many times to measure)."""
    command_line = parser(prog)
    command_line.add_argument("--runs", type=int, default=3)
    return command_line.parse_args()


class ClusterBench:
    """The cluster in `workdir`: its control plane, its node and the stack's Pulumi workspace."""

    def __init__(self, workdir: Path) -> None:
        """Stops the benchmark, in one line, when `workdir` holds no such cluster."""
        if (absent := no_cluster(workdir)) is not None:
            raise SystemExit(f"{absent}; the benchmark's --dir")
        cluster = LocalCluster(workdir)
        self.kube: ControlPlane = cluster.plane()
        self.node = Node(self.kube)
        self.workspace: PulumiWorkspace = cluster.workspace(self.kube)


def write_results(name: str, document: dict[str, Any], lines: list[str]) -> Path:
    """bench/results/`name`.json (the raw figures) and `name`.md (`lines`, the reading); returns
    the markdown's path."""
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / f"{name}.json").write_text(json.dumps(document, indent=1) + "\n")
    markdown = RESULTS / f"{name}.md"
    markdown.write_text("\n".join(lines) + "\n")
    return markdown


def conditions() -> dict[str, str]:
    """When, and on what machine under what load, a result was measured."""
    return {
        "date": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "machine": f"{os.cpu_count()} cores, {platform.machine()}, load average "
        + " ".join(f"{x:.1f}" for x in os.getloadavg()),
    }
