"""`make e2e-cluster DATABASE_REPLICAS=N`: the instance count is checked, with one line, before
anything starts, and reaches the stack config `up` writes; a folder that holds a cluster already
is refused as early. No cluster is started here: `up` is replaced by a recorder."""

from __future__ import annotations

import subprocess
from pathlib import Path
from typing import ClassVar

import pytest

from components import database
from e2e import cluster
from e2e.cluster import LocalCluster
from e2e.controlplane import ControlPlane
from e2e.images import ImageRefs
from harness.make import make_env, run_make
from harness.program import TEST_SECRETS, run_program

REFS = ImageRefs(gateway="r/gateway@sha256:1", model="r/model@sha256:2", database="r/db@sha256:3")
BAD = ["0", str(database.MAX_REPLICAS + 1), "-1", "x", "", "2.0", " 3", "1e1"]


class Recorder:
    """Stands in for LocalCluster: what `main` would have brought up, and with what."""

    made: ClassVar[list[tuple[Path, int]]] = []

    def __init__(self, workdir: Path, database_replicas: int = 1) -> None:
        Recorder.made.append((workdir, database_replicas))

    def up(self) -> list[str]:
        return ["export KUBECONFIG=/nowhere"]


@pytest.fixture
def recorder(monkeypatch: pytest.MonkeyPatch) -> type[Recorder]:
    Recorder.made = []
    monkeypatch.setattr(cluster, "LocalCluster", Recorder)
    return Recorder


@pytest.mark.parametrize("replicas", range(1, database.MAX_REPLICAS + 1))
def test_each_allowed_count_reaches_the_stack_config(tmp_path: Path, replicas: int) -> None:
    plane = ControlPlane(bin_dir=tmp_path, workdir=tmp_path, fake_nodes=0)
    count = cluster.database_replicas(str(replicas))
    assert count == replicas
    config = cluster.stack_config(plane, REFS, count)
    assert config["mlstack:database"] == {"replicas": replicas, "storageSize": "1Gi"}


def test_the_suite_keeps_one_instance_by_default(tmp_path: Path) -> None:
    plane = ControlPlane(bin_dir=tmp_path, workdir=tmp_path, fake_nodes=0)
    assert cluster.stack_config(plane, REFS)["mlstack:database"]["replicas"] == 1


def test_the_cluster_s_model_is_autoscaled_and_the_program_takes_it(tmp_path: Path) -> None:
    """`make e2e-cluster`'s model: an HPA from one replica to three, which the program renders
    (the suite keeps its fixed count)."""
    plane = ControlPlane(bin_dir=tmp_path, workdir=tmp_path, fake_nodes=0)
    config = cluster.stack_config(plane, REFS, model=cluster.CLUSTER_MODEL)
    run = run_program(cluster.STACK, {**config, **TEST_SECRETS})
    hpa = run.one("HorizontalPodAutoscaler", "model").inputs["spec"]
    assert (hpa["minReplicas"], hpa["maxReplicas"]) == (1, 3)
    assert cluster.stack_config(plane, REFS)["mlstack:model"] == {"replicas": 2}


@pytest.mark.parametrize("text", BAD)
def test_any_other_count_is_refused(text: str) -> None:
    with pytest.raises(ValueError) as refused:
        cluster.database_replicas(text)
    assert str(refused.value) == (
        f"DATABASE_REPLICAS={text!r}: the database's instance count is a whole number from 1 to "
        f"{database.MAX_REPLICAS}"
    )


@pytest.mark.parametrize("text", ["0", "x"])
def test_up_with_a_bad_count_starts_nothing(
    text: str, tmp_path: Path, recorder: type[Recorder], capsys: pytest.CaptureFixture[str]
) -> None:
    assert cluster.main(["up", str(tmp_path), "--database-replicas", text]) == 2
    out, err = capsys.readouterr()
    assert out == ""
    assert err == (
        f"e2e cluster: DATABASE_REPLICAS={text!r}: the database's instance count is a whole "
        f"number from 1 to {database.MAX_REPLICAS}\n"
    )
    assert recorder.made == []


def test_up_passes_the_count_on(tmp_path: Path, recorder: type[Recorder]) -> None:
    assert cluster.main(["up", str(tmp_path), "--database-replicas", "3"]) == 0
    assert recorder.made == [(tmp_path.resolve(), 3)]
    assert cluster.main(["up", str(tmp_path)]) == 0
    assert recorder.made[-1] == (tmp_path.resolve(), 1)


def make_check(*variables: str) -> subprocess.CompletedProcess[str]:
    env = make_env("DATABASE_REPLICAS")
    return run_make("e2e-cluster-check", *variables, env=env, timeout=60)


def test_make_checks_database_replicas_with_one_line() -> None:
    too_many = database.MAX_REPLICAS + 1
    refused = make_check(f"DATABASE_REPLICAS={too_many}")
    assert refused.returncode == 2
    assert refused.stdout == ""
    assert refused.stderr.splitlines()[0] == (
        f"e2e cluster: DATABASE_REPLICAS='{too_many}': the database's instance count is a whole "
        f"number from 1 to {database.MAX_REPLICAS}"
    )
    assert make_check().returncode == 0
    assert make_check(f"DATABASE_REPLICAS={database.MAX_REPLICAS}").returncode == 0


@pytest.mark.parametrize("folder", cluster.FOLDERS)
def test_up_in_a_folder_holding_a_cluster_touches_nothing(
    folder: str,
    tmp_path: Path,
    recorder: type[Recorder],
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A second `make e2e-cluster` (to change DATABASE_REPLICAS, say) while one runs there."""
    (tmp_path / folder / "state").mkdir(parents=True)

    assert cluster.main(["up", str(tmp_path), "--database-replicas", "3"]) == 2

    assert capsys.readouterr() == (
        "",
        f"e2e cluster: {tmp_path} holds a cluster already ({folder}/): make e2e-clean "
        f"(python -m e2e.cluster down {tmp_path}) removes it first\n",
    )
    assert recorder.made == []
    assert (tmp_path / folder / "state").is_dir()

    # The recorder stands in for the class here: the class itself refuses too, before it
    # brings anything up.
    def bring_up(*args: object, **kwargs: object) -> None:
        raise AssertionError("a bring-up started")

    monkeypatch.setattr(cluster, "bring_up", bring_up)
    with pytest.raises(RuntimeError, match="holds a cluster already"):
        LocalCluster(tmp_path).up()
    assert (tmp_path / folder / "state").is_dir()


class ToolCluster:
    """Stands in for LocalCluster in `tool`: the workspace's `tool` call it was asked for, and
    an answer as `PulumiWorkspace.tool` gives one."""

    calls: ClassVar[list[tuple[str, tuple[str, ...]]]] = []

    def __init__(self, workdir: Path) -> None:
        self.workdir = workdir

    def plane(self) -> str:
        return "plane"

    def workspace(self, plane: str) -> ToolCluster:
        assert plane == "plane"
        return self

    def tool(self, module: str, *args: str, timeout: float) -> subprocess.CompletedProcess[str]:
        ToolCluster.calls.append((module, args))
        return subprocess.CompletedProcess([module, *args], 3, "said\n", "warned\n")


def test_tool_runs_a_make_targets_tool_on_the_clusters_stack(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """`make switchover STACK=e2e` has no stack file to read here: the cluster's folder holds
    the stack, and `tool` runs the same code with its CLI, backend and kubeconfig."""
    for folder in cluster.FOLDERS:
        (tmp_path / folder).mkdir()
    ToolCluster.calls = []
    monkeypatch.setattr(cluster, "LocalCluster", ToolCluster)

    status = cluster.main(["tool", str(tmp_path), "database_switchover", "--stack", "e2e"])

    assert status == 3
    assert ToolCluster.calls == [("database_switchover", ("--stack", "e2e"))]
    assert capsys.readouterr() == ("said\n", "warned\n")


def test_tool_without_a_cluster_says_so_in_one_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert cluster.main(["tool", str(tmp_path), "drift", "--stack", "e2e"]) == 2
    assert capsys.readouterr() == (
        "",
        f"e2e cluster: {tmp_path} holds no cluster (no pulumi/, cluster/, images/): "
        "`make e2e-cluster` starts one there (E2E_CLUSTER_DIR)\n",
    )
