"""Base images built here, never pulled: a Debian root filesystem made by `mmdebstrap` from
Debian's packages, `docker import`ed as a local image.

A recipe's key is a hash of everything that shapes the tarball (suite, mirrors, packages, hooks,
options) and of the image config given to `docker import`: the tarball is kept in the cache
under that key and rebuilt only when the recipe changes; the image is tagged with it and
imported only when the engine lacks it.
"""

from __future__ import annotations

import hashlib
import json
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Final

from e2e.dockerd import DockerEngine
from harness.poll import log_tail

MIRROR: Final = "http://deb.debian.org/debian"
SECURITY_MIRROR: Final = "http://deb.debian.org/debian-security"
# The options every recipe shares: a minimal system, merged /usr as Debian ships it, no
# recommended packages, and no manuals or documentation (as in Debian's -slim images).
COMMON_OPTIONS: Final = (
    "--variant=minbase",
    "--hook-dir=/usr/share/mmdebstrap/hooks/merged-usr",
    '--aptopt=APT::Install-Recommends "false"',
    "--dpkgopt=path-exclude=/usr/share/man/*",
    "--dpkgopt=path-exclude=/usr/share/info/*",
    "--dpkgopt=path-exclude=/usr/share/doc/*",
    "--dpkgopt=path-include=/usr/share/doc/*/copyright",
)
STANDARD_PATH: Final = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
# Debian's folder for local certificate authorities (update-ca-certificates adds them).
LOCAL_CAS: Final = Path("/usr/local/share/ca-certificates")


def host_cas(folder: Path = LOCAL_CAS) -> tuple[Path, ...]:
    """The host's local certificate authorities: a build that reaches a package registry
    through a TLS-inspecting proxy needs them as much as the host does."""
    return tuple(sorted(folder.rglob("*.crt"))) if folder.is_dir() else ()


def sources(suite: str) -> tuple[str, ...]:
    return (
        f"deb {MIRROR} {suite} main",
        f"deb {MIRROR} {suite}-updates main",
        f"deb {SECURITY_MIRROR} {suite}-security main",
    )


@dataclass(frozen=True)
class Rootfs:
    name: str  # the local image's repository: mlstack-e2e/<name>
    suite: str
    packages: tuple[str, ...]
    # Shell commands run once the Essential packages are in, before `packages` ("$1" is the
    # root): what must exist before a package's maintainer scripts run.
    essential_hooks: tuple[str, ...] = ()
    # `docker import --change` instructions: the image's config.
    changes: tuple[str, ...] = ()
    # Trust the host's local certificate authorities (needs ca-certificates in `packages`).
    host_trust: bool = False

    def command(self, out: Path) -> list[str]:
        hooks = []
        cas = host_cas() if self.host_trust else ()
        if cas:
            target = LOCAL_CAS / "host"
            hooks = [
                f'--customize-hook=mkdir -p "$1{target}"',
                f"--customize-hook=copy-in {' '.join(map(str, cas))} {target}",
                '--customize-hook=chroot "$1" update-ca-certificates',
            ]
        return [
            "mmdebstrap",
            "--format=tar",
            *COMMON_OPTIONS,
            f"--include={','.join(self.packages)}",
            *(f"--essential-hook={hook}" for hook in self.essential_hooks),
            *hooks,
            self.suite,
            str(out),
            *sources(self.suite),
        ]

    @property
    def key(self) -> str:
        """Changes with the recipe, and with the content of every host file it copies in."""
        cas = host_cas() if self.host_trust else ()
        recipe = json.dumps(
            [
                self.command(Path("ROOTFS.tar")),
                self.changes,
                [hashlib.sha256(ca.read_bytes()).hexdigest() for ca in cas],
            ]
        )
        return hashlib.sha256(recipe.encode()).hexdigest()[:16]

    @property
    def tag(self) -> str:
        return f"mlstack-e2e/{self.name}:{self.key}"


# What the services' Dockerfiles rely on from python:3.11-slim-bookworm: `python` on PATH
# (python-is-python3), the venv module with its bundled pip (python3-venv), LANG=C.UTF-8, and
# the runtime files that image adds to Debian's slim one (CA certificates, netbase, tzdata).
PYTHON: Final = Rootfs(
    name="python-base",
    suite="bookworm",
    packages=(
        "python3",
        "python3-venv",
        "python-is-python3",
        "ca-certificates",
        "netbase",
        "tzdata",
    ),
    changes=(f"ENV PATH={STANDARD_PATH}", "ENV LANG=C.UTF-8", 'CMD ["python3"]'),
    # The gateway's and model's builds install from PyPI with the host's network.
    host_trust=True,
)

# The database image's base: services/database/Dockerfile installs these same packages on
# debian:trixie-slim (Debian 13 has the PostgreSQL major version the program deploys), and skips
# that step when the base has them, as this one does.
POSTGRES_MAJOR: Final = 17
DATABASE: Final = Rootfs(
    name="database-base",
    suite="trixie",
    packages=(
        f"postgresql-{POSTGRES_MAJOR}",
        "pgbackrest",
        "python3",
        "python3-venv",
        "ca-certificates",
        "tzdata",
    ),
    essential_hooks=(
        # The postgres user with the uid every mlstack pod runs as, made before
        # postgresql-common's maintainer script would pick one (the Dockerfile does the same).
        'echo "postgres:x:10001:10001:PostgreSQL administrator:/var/lib/postgresql:/bin/bash"'
        ' >> "$1/etc/passwd" && echo "postgres:x:10001:" >> "$1/etc/group"',
        # No cluster made at install time: Patroni makes one.
        'mkdir -p "$1/etc/postgresql-common/createcluster.d" && echo "create_main_cluster = false"'
        ' > "$1/etc/postgresql-common/createcluster.d/no-main-cluster.conf"',
    ),
    changes=(f"ENV PATH={STANDARD_PATH}", "ENV LANG=C.UTF-8"),
    # The build installs Patroni from PyPI with the host's network.
    host_trust=True,
)


def ensure_base(engine: DockerEngine, rootfs: Rootfs, cache: Path) -> str:
    """The local image of `rootfs` (its tag), built and imported only when missing."""
    if engine.image_id(rootfs.tag) is not None:
        return rootfs.tag
    cache.mkdir(parents=True, exist_ok=True)
    tarball = cache / f"{rootfs.name}-{rootfs.key}.tar"
    if not tarball.exists():
        start = time.monotonic()
        _mmdebstrap(rootfs, tarball)
        _say(f"{tarball.name}: mmdebstrap {time.monotonic() - start:.1f} s")
    start = time.monotonic()
    engine.docker("import", *(f"--change={c}" for c in rootfs.changes), str(tarball), rootfs.tag)
    _say(f"{tarball.name}: docker import {time.monotonic() - start:.1f} s")
    return rootfs.tag


def _mmdebstrap(rootfs: Rootfs, tarball: Path) -> None:
    partial = tarball.with_suffix(".tar.partial")
    partial.unlink(missing_ok=True)
    log = tarball.with_suffix(".log")
    with log.open("wb") as out:
        done = subprocess.run(
            rootfs.command(partial), stdout=out, stderr=subprocess.STDOUT, check=False
        )
    if done.returncode != 0:
        partial.unlink(missing_ok=True)
        raise RuntimeError(f"mmdebstrap {rootfs.name} failed; {log}:\n{log_tail(log)}")
    partial.rename(tarball)
    # What older recipes left is dead weight.
    for old in [
        *tarball.parent.glob(f"{rootfs.name}-*.tar"),
        *tarball.parent.glob(f"{rootfs.name}-*.log"),
    ]:
        if old not in (tarball, log):
            old.unlink()


def _say(message: str) -> None:
    print(f"e2e images: {message}", file=sys.stderr)
