"""A Docker engine of the suite's own: Debian's `containerd` and `dockerd` as local processes with
their own sockets, pid files, state and exec roots, and a data root in the e2e cache (images and
the build cache persist from one run to the next).

No container of this engine gets a route off the machine: `--bridge=none` (no docker0, no
default bridge network), `--iptables=false`, `--ip-masq=false` and `--ip-forward=false` (the
daemon leaves the host's firewall and forwarding alone). A container has either no network at
all (`--network=none`, the only mode that exists besides `host`) or, for a build step that
must reach a package registry, the host's own (`--network=host`: the host's traffic, under the
host's rules).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

from e2e import process
from e2e.render import render
from e2e.workdir import InWorkdir

# The CLI of the same Debian release as the daemon: a newer `docker` earlier on PATH may insist
# on BuildKit's buildx plugin, which Debian's engine does not ship.
DEBIAN_DOCKER_CLI: Final = Path("/usr/bin/docker")
START_TIMEOUT: Final = 60.0


def docker_cli() -> str:
    if DEBIAN_DOCKER_CLI.exists():
        return str(DEBIAN_DOCKER_CLI)
    found = shutil.which("docker")
    if found is None:
        raise RuntimeError("no docker CLI: install Debian's docker.io")
    return found


class DockerError(RuntimeError):
    """A docker command failed; the message holds its output."""


@dataclass(frozen=True)
class DockerEngine:
    """One containerd + dockerd pair. `workdir` holds everything that lives only while they
    run (sockets, pid files, logs, exec and state roots); `data_root` holds the images."""

    workdir: Path
    data_root: Path

    socket = InWorkdir("docker.sock")
    containerd_socket = InWorkdir("containerd.sock")
    exec_root = InWorkdir("exec")
    containerd_dir = InWorkdir("containerd")
    containerd_config = InWorkdir("containerd", "config.toml")

    @property
    def dockerd(self) -> process.Daemon:
        """dockerd.pid (the pid as the suite recorded it: dockerd keeps its own pid file in
        exec_root) and dockerd.log; ours while it serves `socket`."""
        return process.Daemon.in_folder(self.workdir, "dockerd", str(self.socket))

    @property
    def containerd(self) -> process.Daemon:
        """containerd.pid and containerd.log; ours while it runs `containerd_config`."""
        return process.Daemon.in_folder(self.workdir, "containerd", str(self.containerd_config))

    def env(self) -> dict[str, str]:
        env = dict(os.environ)
        env["DOCKER_HOST"] = f"unix://{self.socket}"
        # No credential helpers or contexts from the user's ~/.docker.
        env["DOCKER_CONFIG"] = str(self.workdir / "cli")
        env["DOCKER_BUILDKIT"] = "0"
        env.pop("DOCKER_CONTEXT", None)
        return env

    def running(self) -> bool:
        return self.docker_ok("version", "--format", "{{.Server.Version}}")

    def start(self) -> None:
        """Start containerd and dockerd (nothing when this engine already runs)."""
        self.workdir.mkdir(parents=True, exist_ok=True)
        if self.dockerd.running() and self.running():
            return
        # Two daemons on one data root corrupt it: refuse rather than share.
        others = process.find(f"--data-root={self.data_root}")
        if others:
            raise RuntimeError(
                f"another dockerd (pid {others[0]}) uses {self.data_root}; stop it first "
                "(python -m e2e.images down DIR, with the DIR it was started in)"
            )
        self.data_root.mkdir(parents=True, exist_ok=True)
        (self.workdir / "cli").mkdir(exist_ok=True)
        self._start_containerd()
        self._start_dockerd()

    def _start_containerd(self) -> None:
        # A containerd of our own: dockerd would otherwise adopt a system containerd found at
        # its default socket, and run our build containers beside someone else's.
        root = self.containerd_dir
        config = self.containerd_config
        root.mkdir(parents=True, exist_ok=True)
        # Docker needs only the runtime (no CRI plugin); the node's containerd is another process.
        config.write_text(
            render("docker-containerd.toml", base=root, socket=self.containerd_socket)
        )
        self.containerd.start(
            ["containerd", "--config", str(config), "--log-level", "warn"],
            self.containerd_socket.exists,
            "containerd",
            START_TIMEOUT,
        )

    def _start_dockerd(self) -> None:
        config = self.workdir / "daemon.json"
        config.write_text("{}\n")  # never /etc/docker/daemon.json
        argv = [
            "dockerd",
            f"--config-file={config}",
            f"--host=unix://{self.socket}",
            f"--pidfile={self.exec_root / 'dockerd.pid'}",
            f"--exec-root={self.exec_root}",
            f"--data-root={self.data_root}",
            f"--containerd={self.containerd_socket}",
            "--bridge=none",
            "--iptables=false",
            "--ip-masq=false",
            "--ip-forward=false",
            "--log-level=warn",
        ]
        self.dockerd.start(argv, self.running, "dockerd", START_TIMEOUT)

    def stop(self) -> None:
        """Stop dockerd, then containerd, and unmount whatever they left mounted."""
        self.dockerd.stop()
        self.containerd.stop()
        # containerd's shims outlive a killed containerd: none may be left running.
        for pid in process.find(str(self.containerd_socket)):
            process.stop(pid, str(self.containerd_socket), timeout=5)
        process.unmount_under(self.workdir)
        # The data root's mounts are dockerd's: never those of another engine on the same root.
        if not process.find(f"--data-root={self.data_root}"):
            process.unmount_under(self.data_root)

    def docker(self, *args: str, timeout: float = 1800) -> str:
        """`docker args`' output; a DockerError holding the command line, the exit status and
        the output when it fails."""
        try:
            return process.run(docker_cli(), *args, timeout=timeout, env=self.env()).stdout
        except RuntimeError as err:
            raise DockerError(str(err)) from err

    def _docker_unchecked(self, *args: str) -> subprocess.CompletedProcess[str]:
        return process.run(docker_cli(), *args, check=False, timeout=60, env=self.env())

    def docker_ok(self, *args: str) -> bool:
        return self._docker_unchecked(*args).returncode == 0

    def image_id(self, ref: str) -> str | None:
        """The local image's id, or None when the engine has no such image."""
        proc = self._docker_unchecked("image", "inspect", "--format", "{{.Id}}", ref)
        return proc.stdout.strip() if proc.returncode == 0 else None

    def inspect(self, ref: str) -> dict[str, Any]:
        found: list[dict[str, Any]] = json.loads(self.docker("image", "inspect", ref))
        return found[0]
