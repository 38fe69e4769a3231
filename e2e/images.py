"""The app's images, built for real and served by a real registry on 127.0.0.1.

`services/gateway` and `services/model` are built from `services/Dockerfile`, with a Python base
made here from Debian's packages (the Dockerfiles' default base is never pulled: no image
registry is reachable); `services/database` likewise, on a Debian 13 base that already holds the
PostgreSQL and Python packages its Dockerfile would install. The suite's own Docker engine builds
them (`e2e/dockerd.py`), Debian's registry serves them (`e2e/registry.py`), and each is deployed
by digest: `127.0.0.1:<port>/mlstack/<name>@sha256:...`.

A second run is fast when nothing changed: the base images, the engine's layer cache and the
registry's blobs persist in `images/` of the toolchain's cache folder (e2e/toolchain/build.sh's).

    python -m e2e.images up DIR     # build and push every image; prints name=reference lines
    python -m e2e.images down DIR   # stop the engine and the registry started in DIR
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Final, ParamSpec, TypeVar

from components import image
from e2e import apt
from e2e.controlplane import E2E_DIR, TOOLCHAIN
from e2e.dockerd import DockerEngine
from e2e.registry import Registry
from e2e.rootfs import DATABASE, POSTGRES_MAJOR, PYTHON, Rootfs, ensure_base
from e2e.workdir import InWorkdir

# The Debian packages this module needs on the host (e2e/image-packages.txt; apt-get installs
# the one that brings a missing command).
APT_PACKAGES: Final = tuple(apt.listed(E2E_DIR / "image-packages.txt"))
# Each command this module runs, and which of APT_PACKAGES brings it.
COMMANDS: Final = {
    "dockerd": "docker.io",
    "containerd": "docker.io",
    "runc": "docker.io",
    "mmdebstrap": "mmdebstrap",
    "docker-registry": "docker-registry",
}
REPOSITORY: Final = "mlstack"
TAG: Final = "e2e"
P = ParamSpec("P")
R = TypeVar("R")


@dataclass(frozen=True)
class ImageSpec:
    """How the suite builds service `name`'s image: components.image's recipe (its Dockerfile,
    stage and build arguments, all of services/ as the context) on a base of its own."""

    name: str
    base: Rootfs
    # "host" only for a build whose RUN steps reach a package registry (the host's traffic);
    # "none" otherwise.
    network: str
    # Beyond the recipe's: what the base made here needs.
    build_args: tuple[tuple[str, str], ...] = ()


IMAGES: Final = (
    ImageSpec("gateway", PYTHON, "host"),
    ImageSpec("model", PYTHON, "host"),
    ImageSpec("database", DATABASE, "host", (("PG_MAJOR", str(POSTGRES_MAJOR)),)),
)


@dataclass(frozen=True)
class ImageRefs:
    """What to deploy: `127.0.0.1:<port>/mlstack/<name>@sha256:<digest>`."""

    gateway: str
    model: str
    database: str


def cache_dir() -> Path:
    """`images/` in the toolchain's cache folder, which build.sh names."""
    root = subprocess.run(
        ["bash", str(TOOLCHAIN / "build.sh"), "--cache-root"],
        check=True,
        capture_output=True,
        text=True,
    ).stdout.strip()
    return Path(root).resolve() / "images"


def ensure_host_packages() -> None:
    """Install the APT_PACKAGES whose commands are missing (root only)."""
    missing = sorted({package for cmd, package in COMMANDS.items() if shutil.which(cmd) is None})
    if not missing:
        return
    apt.install(missing)


@dataclass
class Images:
    """The engine and the registry of one run: `workdir` holds what lives only while they run,
    `cache` what persists (image store, build cache, base tarballs, registry blobs)."""

    workdir: Path
    cache: Path = field(default_factory=cache_dir)
    timings: dict[str, float] = field(default_factory=dict)

    @property
    def engine(self) -> DockerEngine:
        return DockerEngine(self.workdir / "docker", self.cache / "docker")

    @property
    def registry(self) -> Registry:
        return Registry(self.workdir / "registry", self.cache / "registry")

    refs_file = InWorkdir("images.json")

    def up(self, port: int = 0) -> ImageRefs:
        """Start the engine and the registry (on `port`, 0: a free one), build every image and
        push it; both keep running until `down`. On failure everything is stopped."""
        self.workdir.mkdir(parents=True, exist_ok=True)
        try:
            ensure_host_packages()
            self._timed("engine and registry start", self._start, port)
            refs = {spec.name: self._image(spec) for spec in IMAGES}
            # What earlier builds left untagged (a previous version of an image) is dead weight.
            self.engine.docker("image", "prune", "--force")
        except BaseException:
            self.down()
            raise
        found = ImageRefs(**refs)
        self.refs_file.write_text(json.dumps(asdict(found), indent=2) + "\n")
        return found

    def down(self) -> None:
        self.engine.stop()
        self.registry.stop()

    def _start(self, port: int) -> None:
        self.engine.start()
        self.registry.start(port)

    def _image(self, spec: ImageSpec) -> str:
        base = self._timed(f"{spec.name}: base {spec.base.name}", self._base, spec.base)
        local = self._timed(f"{spec.name}: build", self._build, spec, base)
        return self._timed(f"{spec.name}: push", self._push, spec.name, local)

    def _base(self, rootfs: Rootfs) -> str:
        return ensure_base(self.engine, rootfs, self.cache / "rootfs")

    def _build(self, spec: ImageSpec, base: str) -> str:
        local = local_tag(spec.name)
        recipe = [*image.build_args(spec.name).items(), *spec.build_args]
        args = [f"BASE_IMAGE={base}", *(f"{k}={v}" for k, v in recipe)]
        stage = image.target(spec.name)
        output = self.engine.docker(
            "build",
            "--force-rm",
            f"--network={spec.network}",
            *(part for arg in args for part in ("--build-arg", arg)),
            *(("--target", stage) if stage else ()),
            "--tag",
            local,
            "--file",
            str(image.dockerfile(spec.name)),
            str(image.SERVICES_DIR),
        )
        (self.workdir / f"build-{spec.name}.log").write_text(output)
        return local

    def _push(self, name: str, local: str) -> str:
        address = self.registry.address
        remote = f"{address}/{REPOSITORY}/{name}:{TAG}"
        self.engine.docker("tag", local, remote)
        self.engine.docker("push", remote)
        # The port changes from run to run: the local tag is what the next build starts from.
        self.engine.docker("image", "rm", remote)
        digest = self.registry.digest(f"{REPOSITORY}/{name}", TAG)
        return f"{address}/{REPOSITORY}/{name}@{digest}"

    def _timed(self, what: str, step: Callable[P, R], *args: P.args, **kwargs: P.kwargs) -> R:
        start = time.monotonic()
        result = step(*args, **kwargs)
        self.timings[what] = elapsed = time.monotonic() - start
        print(f"e2e images: {what}: {elapsed:.1f} s", file=sys.stderr)
        return result


def local_tag(name: str) -> str:
    """The engine's tag of the image `name` (gateway, model, database) once built."""
    return f"mlstack-e2e/{name}:build"


def main(argv: Sequence[str]) -> int:
    if len(argv) != 2 or argv[0] not in ("up", "down"):
        print(__doc__, file=sys.stderr)
        return 2
    images = Images(Path(argv[1]).resolve())
    if argv[0] == "up":
        for name, ref in asdict(images.up()).items():
            print(f"{name}={ref}")
    else:
        images.down()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
