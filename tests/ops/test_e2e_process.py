"""How the suite finds and stops its own processes, with short-lived Python processes of the
test's own standing in for them (the real ones run in `make e2e`): daemons by pid file and marker
(e2e/process.py's `Daemon`: docker-registry, dockerd, containerd, weed), the node's by pid and
identity (e2e/node/state.py) and its containerd's shims by socket, the control plane's by
kwokctl's pid files (e2e/controlplane.py); and the file names the first four keep, so that a
tree an older suite started is still found and stopped. No other program is ever signalled: one
the kernel has given a recorded pid to, or one that only names a folder of the suite's."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Final

import pytest

from e2e import process
from e2e.controlplane import ControlPlane
from e2e.dockerd import DockerEngine
from e2e.node import Node
from e2e.node.layout import Layout
from e2e.node.state import NodeState
from e2e.registry import Registry
from e2e.s3 import S3Server
from harness.processes import alive
from tests.stand_ins import stand_in

# Says it serves, then sleeps; its last argument is the marker (a path of the test's own).
SERVE = "import sys, time; print('serving', sys.argv[1], flush=True); time.sleep(60)"


@pytest.fixture
def folder(tmp_path: Path) -> Iterator[Path]:
    """The daemon's folder, its path the marker; whatever still names it is killed at the end."""
    yield tmp_path
    process.stop_all(process.find(str(tmp_path)), grace=1)


def serve(folder: Path) -> list[str]:
    return [sys.executable, "-c", SERVE, str(folder)]


Start = Callable[[list[str]], subprocess.Popen[str]]


@pytest.fixture
def start() -> Iterator[Start]:
    """Starts a SERVE script's `argv` and returns it once it says it serves: its command line is
    then `argv`, no longer the test's (which a child has from its fork until it runs `argv`).
    Each one is killed at the end."""
    started: list[subprocess.Popen[str]] = []

    def serving(argv: list[str]) -> subprocess.Popen[str]:
        proc = subprocess.Popen(argv, stdout=subprocess.PIPE, text=True)
        started.append(proc)
        assert proc.stdout is not None and proc.stdout.readline().startswith("serving")
        return proc

    yield serving
    for proc in started:
        proc.kill()
        proc.wait()
        assert proc.stdout is not None
        proc.stdout.close()


def test_a_started_daemon_records_its_pid_runs_and_stops(folder: Path) -> None:
    daemon = process.Daemon.in_folder(folder, "probe", str(folder))
    assert (daemon.pidfile, daemon.log) == (folder / "probe.pid", folder / "probe.log")
    assert not daemon.running()

    daemon.start(serve(folder), lambda: "serving" in daemon.log.read_text(), "the probe", 10)

    pid = process.read_pid(daemon.pidfile)
    assert pid is not None and daemon.pid() == pid and daemon.running()
    daemon.stop(timeout=5)
    assert not daemon.running() and not alive(pid)
    assert process.find(str(folder)) == []


def test_a_daemon_whose_command_line_does_not_name_the_marker_is_not_ours(folder: Path) -> None:
    ours = process.Daemon.in_folder(folder, "probe", str(folder))
    ours.start(serve(folder), lambda: "serving" in ours.log.read_text(), "the probe", 10)
    # The same pid file, read by a daemon whose marker that process's command line lacks: a
    # recycled pid of some other program.
    theirs = process.Daemon(ours.pidfile, ours.log, str(folder / "elsewhere"))

    assert theirs.pid() is None and not theirs.running()
    theirs.stop(timeout=1)
    assert ours.running()


def test_a_daemon_that_never_comes_up_fails_with_the_end_of_its_log(folder: Path) -> None:
    daemon = process.Daemon.in_folder(folder, "probe", str(folder), log=folder / "logs" / "p.log")

    with pytest.raises(RuntimeError) as failed:
        daemon.start(serve(folder), lambda: False, "the probe's answer", 2)

    message = str(failed.value)
    assert message.startswith(f"timed out after 2 s waiting for the probe's answer; {daemon.log}:")
    assert f"serving {folder}" in message
    assert (folder / "probe.pid").exists() and not (folder / "probe.log").exists()
    # Left as it is: stopping it is the owner's call.
    assert daemon.running()


def test_the_suite_s_daemons_keep_their_file_names_and_markers(tmp_path: Path) -> None:
    registry = Registry(tmp_path / "registry", tmp_path / "blobs")
    engine = DockerEngine(tmp_path / "docker", tmp_path / "data")
    s3 = S3Server(Path("weed"), tmp_path / "s3", tmp_path / "ca")
    node_s3 = S3Server(Path("weed"), tmp_path / "s3", tmp_path / "ca", log=tmp_path / "weed.log")

    assert registry.daemon == process.Daemon(
        tmp_path / "registry" / "registry.pid",
        tmp_path / "registry" / "registry.log",
        str(tmp_path / "registry" / "registry.yml"),
    )
    assert engine.dockerd == process.Daemon(
        tmp_path / "docker" / "dockerd.pid",
        tmp_path / "docker" / "dockerd.log",
        str(tmp_path / "docker" / "docker.sock"),
    )
    assert engine.containerd == process.Daemon(
        tmp_path / "docker" / "containerd.pid",
        tmp_path / "docker" / "containerd.log",
        str(tmp_path / "docker" / "containerd" / "config.toml"),
    )
    assert s3.daemon == process.Daemon(
        tmp_path / "s3" / "weed.pid", tmp_path / "s3" / "weed.log", str(tmp_path / "s3")
    )
    assert node_s3.daemon.log == tmp_path / "weed.log"


def test_a_node_daemon_is_recorded_by_pid_and_identity_and_stopped(folder: Path) -> None:
    state = NodeState(Layout(folder))

    pid = state.spawn("kubelet", serve(folder))

    recorded = json.loads(state.layout.state_file.read_text())
    assert recorded["pids"] == {"kubelet": pid}
    assert recorded["identities"] == {"kubelet": process.identity(pid)} != {"kubelet": None}
    assert state.running() == {"kubelet": pid} and state.alive("kubelet")
    state.stop("kubelet", grace=5)
    assert not alive(pid) and state.running() == {}
    assert json.loads(state.layout.state_file.read_text())["identities"] == {}


def test_a_recorded_pid_now_another_process_s_is_not_the_node_s(folder: Path, start: Start) -> None:
    """The kernel gave the pid of a daemon that has exited (or of a run before the machine
    restarted) to another program: `down` must neither count nor signal it."""
    other = start(serve(folder))
    identity = process.identity(other.pid)
    assert identity is not None
    # What the daemon's start recorded: the same pid, forked at another moment.
    boot, pid, started = identity.split()
    exited = f"{boot} {pid} {int(started) - 1}"
    state = NodeState(Layout(folder))
    state.save(
        {
            "pids": {"kubelet": other.pid, "containerd": other.pid},
            "identities": {"kubelet": exited, "containerd": identity},
        }
    )

    assert state.running() == {"containerd": other.pid}
    state.stop("kubelet", grace=1)
    assert alive(other.pid) and "kubelet" not in state.read()["pids"]


def test_a_state_an_older_suite_wrote_names_its_daemons_by_pid_alone(
    folder: Path, start: Start
) -> None:
    other = start(serve(folder))
    state = NodeState(Layout(folder))
    state.save({"pids": {"kubelet": other.pid}})

    assert state.running() == {"kubelet": other.pid}
    state.stop("kubelet", grace=5)
    assert other.wait(timeout=5) is not None


def test_a_process_identity_is_its_own_and_gone_with_it(folder: Path, start: Start) -> None:
    first, second = start(serve(folder)), start(serve(folder))
    identities = (process.identity(first.pid), process.identity(second.pid))
    first.kill()
    first.wait()

    assert None not in identities and identities[0] != identities[1]
    assert process.identity(first.pid) is None


# `kwokctl delete cluster` as kwokctl's binary runtime does it: SIGKILL to each pid its pid files
# name, then the pid file removed; or a kwokctl that fails before it stops anything.
KWOKCTL_KILLS: Final = """\
#!{python}
import os, signal
from pathlib import Path
for pidfile in Path({pids!r}).glob("*.pid"):
    try:
        os.kill(int(pidfile.read_text()), signal.SIGKILL)
    except ProcessLookupError:
        pass
    pidfile.unlink()
"""
KWOKCTL_FAILS: Final = "#!{python}\nimport sys\nsys.exit('kwokctl: cluster not found')\n"


@pytest.mark.parametrize("kwokctl", [KWOKCTL_KILLS, KWOKCTL_FAILS], ids=["kills", "fails"])
def test_the_control_plane_stops_its_binaries_and_no_other_pid(
    folder: Path, start: Start, kwokctl: str
) -> None:
    """kwokctl's pid files name etcd, which runs from the cluster's folder, and a pid the kernel
    has given to another program since: etcd is stopped, by kwokctl or after it, and the other
    program never is."""
    plane = ControlPlane(bin_dir=folder / "toolchain", workdir=folder / "plane")
    pids = plane.cluster_dir / "pids"
    stand_in(plane.bin_dir, "kwokctl", kwokctl.format(python=sys.executable, pids=str(pids)))
    etcd = stand_in(plane.cluster_dir / "bin", "etcd", f"#!{sys.executable}\n{SERVE}\n")
    ours = start([str(etcd), str(folder)])
    other = start(serve(folder))
    pids.mkdir()
    (pids / "etcd.pid").write_text(str(ours.pid))
    (pids / "kube-apiserver.pid").write_text(str(other.pid))

    plane.stop()

    assert ours.wait(timeout=5) is not None
    assert other.poll() is None


def test_the_node_stops_the_shims_of_its_containerd_and_no_reader_of_its_logs(
    folder: Path, start: Start
) -> None:
    """A shim is given containerd's socket (`-address`); a `tail -f` of a log of the node's
    folder names that folder too, but is the developer's."""
    node = Node(ControlPlane(bin_dir=folder / "bin", workdir=folder / "cluster"))
    shim = start([*serve(folder), "-address", str(node.layout.containerd_socket)])
    reader = start(serve(node.layout.logs / "kubelet.log"))

    node._stop_shims()

    assert shim.wait(timeout=5) is not None
    assert reader.poll() is None
