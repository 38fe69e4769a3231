"""The suite's daemons by pid file and log (e2e/process.py's `Daemon`), with a short-lived Python
process of the test's own standing in for docker-registry, dockerd, containerd and weed (which
run in `make e2e`); and the file names those four keep, so that a tree an older suite started is
still found and stopped."""

from __future__ import annotations

import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from e2e import process
from e2e.dockerd import DockerEngine
from e2e.registry import Registry
from e2e.s3 import S3Server

# Says it serves, then sleeps; its last argument is the marker (a path of the test's own).
SERVE = "import sys, time; print('serving', sys.argv[1], flush=True); time.sleep(60)"


@pytest.fixture
def folder(tmp_path: Path) -> Iterator[Path]:
    """The daemon's folder, its path the marker; whatever still names it is killed at the end."""
    yield tmp_path
    process.stop_all(process.find(str(tmp_path)), grace=1)


def serve(folder: Path) -> list[str]:
    return [sys.executable, "-c", SERVE, str(folder)]


def test_a_started_daemon_records_its_pid_runs_and_stops(folder: Path) -> None:
    daemon = process.Daemon.in_folder(folder, "probe", str(folder))
    assert (daemon.pidfile, daemon.log) == (folder / "probe.pid", folder / "probe.log")
    assert not daemon.running()

    daemon.start(serve(folder), lambda: "serving" in daemon.log.read_text(), "the probe", 10)

    pid = process.read_pid(daemon.pidfile)
    assert pid is not None and daemon.pid() == pid and daemon.running()
    daemon.stop(timeout=5)
    assert not daemon.running() and not process.alive(pid)
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
