"""A real container registry on 127.0.0.1: Debian's `docker-registry` (the CNCF Distribution
registry) as a process of the suite, plain HTTP on loopback, its storage in the e2e cache.

Docker and containerd treat 127.0.0.0/8 registries as local: both push and pull there over
plain HTTP without further configuration of Docker (containerd needs a hosts entry: the node's
business).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Final

from e2e import process
from e2e.image_archive import OCI_MANIFEST
from e2e.render import render
from e2e.workdir import InWorkdir
from harness.http import answers, request
from harness.ports import LOOPBACK, free_port

# What `docker push` of Docker 20.10 stores; asking for it returns the digest that was pushed.
MANIFEST_TYPES: Final = (
    "application/vnd.docker.distribution.manifest.v2+json",
    "application/vnd.docker.distribution.manifest.list.v2+json",
    OCI_MANIFEST,
    "application/vnd.oci.image.index.v1+json",
)
START_TIMEOUT: Final = 30.0


@dataclass(frozen=True)
class Registry:
    """`workdir` holds its config, pid file, address and log (`daemon`); `storage` its blobs."""

    workdir: Path
    storage: Path

    config = InWorkdir("registry.yml")
    address_file = InWorkdir("registry.address")

    @property
    def daemon(self) -> process.Daemon:
        """`docker-registry`: registry.pid and registry.log, ours while it serves `config`."""
        return process.Daemon.in_folder(self.workdir, "registry", str(self.config))

    @property
    def address(self) -> str:
        """`127.0.0.1:<port>`, once started."""
        return self.address_file.read_text().strip()

    def start(self, port: int = 0) -> None:
        """Serve on `port` (0: any free port); nothing when it already runs."""
        self.workdir.mkdir(parents=True, exist_ok=True)
        if self.daemon.running() and self._answers():
            return
        self.storage.mkdir(parents=True, exist_ok=True)
        address = f"{LOOPBACK}:{port or free_port(LOOPBACK)}"
        self.config.write_text(render("registry.yml", storage=self.storage, address=address))
        self.address_file.write_text(address + "\n")
        self.daemon.start(
            ["docker-registry", "serve", str(self.config)],
            self._answers,
            "docker-registry",
            START_TIMEOUT,
        )

    def stop(self) -> None:
        self.daemon.stop()

    def _answers(self) -> bool:
        return self.address_file.exists() and answers(f"http://{self.address}/v2/")

    def digest(self, repository: str, reference: str) -> str:
        """The digest of the manifest the registry serves for `repository:reference`."""
        reply = request(
            "HEAD",
            f"http://{self.address}/v2/{repository}/manifests/{reference}",
            headers={"Accept": ", ".join(MANIFEST_TYPES)},
        )
        digest = reply.headers.get("Docker-Content-Digest", "")
        if reply.status != 200 or not digest.startswith("sha256:"):
            raise RuntimeError(
                f"{repository}:{reference}: the registry answered {reply.status}, no digest"
            )
        return digest
