"""The one bring-up of `make e2e-cluster` and the e2e suite (e2e/cluster.py `bring_up`): each
part's teardown is on the ExitStack before the part starts, and closing the stack removes what
was made, node first. No part really starts here: each is a recorder."""

from __future__ import annotations

import contextlib
import subprocess
from pathlib import Path
from typing import Any, ClassVar

import pytest

from e2e import cluster, controlplane
from e2e.images import ImageRefs
from e2e.teardown import run_steps

REFS = ImageRefs(gateway="r/gateway@sha256:1", model="r/model@sha256:2", database="r/db@sha256:3")


class Calls:
    made: ClassVar[list[str]] = []
    fail: ClassVar[str] = ""

    @classmethod
    def record(cls, call: str) -> None:
        cls.made.append(call)
        if call == cls.fail:
            raise RuntimeError(call)


class FakeS3:
    endpoint = "https://10.250.0.1:9000"
    bucket = "mlstack-backups"
    region = "us-east-1"
    access_key = "key"
    secret_key = "secret"

    def __init__(self, ca: Path) -> None:
        self.ca_certificate = ca


class FakeImages:
    def __init__(self, workdir: Path) -> None:
        self.workdir = workdir
        self.timings: dict[str, float] = {}
        self.engine = self
        self.registry = self
        self.address = "127.0.0.1:5000"

    def up(self) -> ImageRefs:
        Calls.record("images up")
        return REFS

    def stop(self) -> None:
        Calls.record("engine stop")

    def down(self) -> None:
        Calls.record("images down")


class FakePlane:
    def __init__(self, bin_dir: Path, workdir: Path, fake_nodes: int) -> None:
        assert fake_nodes == 0
        self.workdir = workdir
        self.kubeconfig = workdir / "kubeconfig.yaml"
        self.context = "kwok-mlstack-e2e"
        self.bin_dir = bin_dir

    def start(self) -> None:
        Calls.record("plane start")

    def stop(self) -> None:
        Calls.record("plane stop")

    def load_balancer_address(self, namespace: str, service: str) -> str:
        return "10.97.0.9"


class FakeNode:
    left: ClassVar[list[str]] = []

    def __init__(self, plane: FakePlane, registries: list[str] | None = None) -> None:
        self.s3 = FakeS3(plane.workdir.parent / "ca.crt")

    def up(self) -> None:
        Calls.record("node up")

    def wait_for_metrics(self) -> None:
        Calls.record("node metrics")

    def down(self) -> list[str]:
        Calls.record("node down")
        return list(FakeNode.left)

    def add_volume(self, namespace: str, claim: str) -> Path:
        Calls.record(f"volume {claim}")
        return Path()


class FakeWorkspace:
    stacks: ClassVar[list[tuple[str, dict[str, Any], dict[str, str]]]] = []

    def __init__(self, bin_dir: Path, root: Path, kubeconfig: Path) -> None:
        self.backend_dir = root / "backend"

    def create(self) -> None:
        Calls.record("workspace create")

    def run(self, *args: str) -> None:
        Calls.record(f"pulumi {args[0]}")

    def init_stack(self, stack: str, config: dict[str, Any], secrets: dict[str, str]) -> None:
        Calls.record("stack init")
        FakeWorkspace.stacks.append((stack, config, secrets))


@pytest.fixture(autouse=True)
def parts(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    (tmp_path / "ca.crt").write_text("CA\n")
    Calls.made, Calls.fail, FakeNode.left, FakeWorkspace.stacks = [], "", [], []
    monkeypatch.setattr(cluster, "Images", FakeImages)
    monkeypatch.setattr(cluster, "ControlPlane", FakePlane)
    monkeypatch.setattr(cluster, "Node", FakeNode)
    monkeypatch.setattr(cluster, "PulumiWorkspace", FakeWorkspace)
    monkeypatch.setattr(cluster, "toolchain_bin", lambda: tmp_path / "bin")


VOLUMES = [f"volume {claim}" for claim in cluster.CLAIMS]
# The images and the control plane start side by side, in either order; the rest in this one.
TOGETHER = {"images up", "plane start"}
UP = ["images up", "plane start", "engine stop", "node up", *VOLUMES]
INIT = ["workspace create", "pulumi login", "stack init"]


def brought_up(made: list[str], then: list[str]) -> bool:
    """Whether `made` is the bring-up's calls (the first two in either order), then `then`."""
    return set(made[:2]) == TOGETHER and made[2:] == [*UP[2:], *then]


def test_the_suite_s_bring_up_and_its_teardown(tmp_path: Path) -> None:
    left: list[str] = []
    with contextlib.ExitStack() as stack:
        cluster.bring_up(stack, tmp_path, tmp_path / "bin", {"mlstack:apiKey": "k"}, left)
        assert brought_up(Calls.made, INIT), Calls.made
    assert Calls.made[len(UP + INIT) :] == ["node down", "plane stop", "images down"]
    assert left == []
    [(name, config, secrets)] = FakeWorkspace.stacks
    assert name == cluster.STACK
    assert config["mlstack:model"] == cluster.SUITE_MODEL
    assert config["mlstack:database"]["replicas"] == 1
    assert secrets["mlstack:apiKey"] == "k" and secrets["mlstack:databaseBackupS3AccessKey"]


@pytest.mark.parametrize(
    ("fail", "torn_down"),
    [
        # The other of the two started beside it: both are torn down.
        ("images up", ["plane stop", "images down"]),
        ("plane start", ["plane stop", "images down"]),
        ("node up", ["node down", "plane stop", "images down"]),
    ],
)
def test_a_failed_bring_up_removes_what_it_started(
    tmp_path: Path, fail: str, torn_down: list[str]
) -> None:
    Calls.fail = fail
    left: list[str] = []
    with pytest.raises(RuntimeError), contextlib.ExitStack() as stack:
        cluster.bring_up(stack, tmp_path, tmp_path / "bin", {}, left)
    assert Calls.made[-len(torn_down) :] == torn_down
    # Nothing after the part that failed was started.
    started = Calls.made[: -len(torn_down)]
    assert set(started) <= {*TOGETHER, *UP[2 : UP.index(fail) + 1]}, Calls.made


def test_what_the_teardown_could_not_do_is_reported(tmp_path: Path) -> None:
    FakeNode.left = ["link mlse2e-node"]
    Calls.fail = "plane stop"
    left: list[str] = []
    with contextlib.ExitStack() as stack:
        cluster.bring_up(stack, tmp_path, tmp_path / "bin", {}, left)
    assert Calls.made[-3:] == ["node down", "plane stop", "images down"]
    assert left == ["link mlse2e-node", "control plane: teardown failed: plane stop"]


def test_every_teardown_step_runs_and_each_failure_is_left_behind() -> None:
    logged: list[str] = []

    def fail() -> None:
        raise RuntimeError("busy")

    steps = [("unmount", fail), ("remove links", lambda: logged.append("ran")), ("cgroups", fail)]
    assert run_steps(steps, logged.append) == [
        "unmount: teardown failed: busy",
        "cgroups: teardown failed: busy",
    ]
    assert logged == ["unmount: busy", "ran", "cgroups: busy"]


def test_the_cluster_is_left_running_and_its_down_removes_it(tmp_path: Path) -> None:
    workdir = tmp_path / "mlstack-e2e-cluster"
    workdir.mkdir()
    (workdir / "ca.crt").write_text("CA\n")  # the fake S3 server's, read by up
    local = cluster.LocalCluster(workdir, database_replicas=3)
    lines = local.up()
    (workdir / "ca.crt").unlink()
    assert brought_up(Calls.made, [*INIT, "pulumi up", "node metrics"]), Calls.made
    assert [line.split("=")[0] for line in lines] == [
        "export KUBECONFIG",
        "export MLSTACK_GATEWAY_URL",
        "export MLSTACK_API_KEY",
    ]
    [(_, config, _)] = FakeWorkspace.stacks
    assert config["mlstack:model"] == cluster.CLUSTER_MODEL
    assert config["mlstack:database"]["replicas"] == 3
    Calls.made = []
    assert local.down() == []
    assert Calls.made == ["node down", "plane stop", "images down"]
    assert not workdir.exists()


def test_a_failed_cluster_up_removes_what_it_started(tmp_path: Path) -> None:
    Calls.fail = "pulumi up"
    with pytest.raises(RuntimeError):
        cluster.LocalCluster(tmp_path).up()
    assert Calls.made[-4:] == ["pulumi up", "node down", "plane stop", "images down"]


def test_an_interruption_stops_no_teardown_step_and_goes_on_at_the_end() -> None:
    """A Ctrl-C during the node's drain: its kubelet is still stopped, then the Ctrl-C goes on."""
    ran: list[str] = []

    def drain() -> None:
        raise KeyboardInterrupt

    steps = [("drain", drain), ("stop kubelet", lambda: ran.append("stop kubelet"))]
    failed: list[str] = []
    with pytest.raises(KeyboardInterrupt):
        run_steps(steps, ran.append, failed)
    assert ran == ["drain: interrupted (KeyboardInterrupt)", "stop kubelet"]
    assert failed == ["drain: teardown interrupted (KeyboardInterrupt)"]


def a_cluster_left_running(workdir: Path) -> cluster.LocalCluster:
    """`LocalCluster.up` in `workdir`, with the folders a real one makes (what finds its
    processes and rules again: the node's state.json, kwokctl's pid files)."""
    workdir.mkdir()
    (workdir / "ca.crt").write_text("CA\n")  # the fake S3 server's, read by up
    local = cluster.LocalCluster(workdir)
    local.up()
    (workdir / "ca.crt").unlink()
    for name in cluster.FOLDERS:
        (workdir / name).mkdir()
    (workdir / "cluster" / "node").mkdir()
    (workdir / "cluster" / "node" / "state.json").write_text("{}")
    Calls.made = []
    return local


def test_an_interrupted_cluster_down_keeps_the_cluster_s_folders(tmp_path: Path) -> None:
    """A Ctrl-C during the node's teardown: the other parts are still torn down, and the folders
    stay for the next `down`."""
    local = a_cluster_left_running(tmp_path / "c")

    def interrupted(self: FakeNode) -> list[str]:
        Calls.record("node down")
        raise KeyboardInterrupt

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(FakeNode, "down", interrupted)
        with pytest.raises(KeyboardInterrupt):
            local.down()
    assert Calls.made == ["node down", "plane stop", "images down"]
    assert (tmp_path / "c" / "cluster" / "node" / "state.json").exists()
    assert all((tmp_path / "c" / name).is_dir() for name in cluster.FOLDERS)
    # The next `down` finishes the job.
    assert local.down() == []
    assert not (tmp_path / "c").exists()


class Toolchain:
    """Stands in for build.sh (`toolchain_bin`): its calls; a build is refused, and with
    `missing`, so is a look without building."""

    def __init__(self, bin_dir: Path, missing: bool = False) -> None:
        self.bin_dir, self.missing = bin_dir, missing
        self.calls: list[tuple[tuple[str, ...], bool]] = []

    def __call__(self, *tools: str, build: bool = True) -> Path:
        self.calls.append((tools, build))
        if build or self.missing:
            raise subprocess.CalledProcessError(1, ["bash", "e2e/toolchain/build.sh"])
        return self.bin_dir


def test_a_cluster_down_never_builds_the_toolchain(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    local = a_cluster_left_running(tmp_path / "c")
    toolchain = Toolchain(tmp_path / "bin")
    monkeypatch.setattr(cluster, "toolchain_bin", toolchain)
    monkeypatch.setattr(controlplane, "toolchain_bin", toolchain)
    assert local.down() == []
    assert Calls.made == ["node down", "plane stop", "images down"]
    assert toolchain.calls == [(("kwok", "kubectl"), False)]
    assert not (tmp_path / "c").exists()


def test_a_cluster_down_without_its_toolchain_still_stops_what_goes_without_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """No recorded bin folder and no toolchain: every part's teardown runs all the same (the
    node's kubelet, containerd, rules and guard need no kubectl; only its drain does, which
    fails as a step), and what is left keeps the folders that find it again."""
    local = a_cluster_left_running(tmp_path / "c")
    toolchain = Toolchain(tmp_path / "bin", missing=True)
    monkeypatch.setattr(cluster, "toolchain_bin", toolchain)
    monkeypatch.setattr(controlplane, "toolchain_bin", toolchain)
    monkeypatch.setattr(FakeNode, "left", ["drain: teardown failed: no kubectl"])
    assert local.down() == ["drain: teardown failed: no kubectl"]
    assert Calls.made == ["node down", "plane stop", "images down"]
    assert (tmp_path / "c" / "cluster" / "node" / "state.json").exists()


def test_the_teardown_runs_the_binaries_the_control_plane_started_with(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`start` records its bin folder before kwokctl runs; the teardown takes it while it holds
    kwokctl and kubectl, and looks the toolchain up (never building) otherwise."""
    bin_dir = tmp_path / "tools" / "bin"
    bin_dir.mkdir(parents=True)
    (tmp_path / "tools" / "stages").mkdir()
    (tmp_path / "tools" / "stages" / "pod-ready.yaml").write_text("kind: Stage\n")

    def kwokctl(self: controlplane.ControlPlane, *args: str, timeout: float = 300) -> None:
        raise RuntimeError("kwokctl create cluster failed")

    monkeypatch.setattr(controlplane.ControlPlane, "kwokctl", kwokctl)
    plane = controlplane.ControlPlane(bin_dir=bin_dir, workdir=tmp_path / "cluster")
    with pytest.raises(RuntimeError, match="kwokctl create cluster failed"):
        plane.start()

    toolchain = Toolchain(tmp_path / "elsewhere")
    monkeypatch.setattr(controlplane, "toolchain_bin", toolchain)
    assert controlplane.teardown_bin(tmp_path / "cluster") == tmp_path / "elsewhere"
    for tool in controlplane.TEARDOWN_TOOLS:
        (bin_dir / tool).touch()
    assert controlplane.teardown_bin(tmp_path / "cluster") == bin_dir
    assert toolchain.calls == [(("kwok", "kubectl"), False)]
