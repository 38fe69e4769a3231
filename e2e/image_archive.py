"""Write a one-layer container image as a tar archive, without Docker.

The archive is both an OCI image layout (`oci-layout`, `index.json`, `blobs/`) and a `docker
save` archive (`manifest.json`), so `ctr images import` and `docker load` both read it. The layer
is deterministic (fixed owner and times): the same files give the same image digest.
"""

from __future__ import annotations

import hashlib
import io
import json
import tarfile
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
OCI_CONFIG = "application/vnd.oci.image.config.v1+json"
OCI_LAYER = "application/vnd.oci.image.layer.v1.tar"


@dataclass(frozen=True)
class ImageFile:
    """One file of the image: its path inside the image, its bytes and its mode."""

    path: str
    data: bytes
    mode: int = 0o755


def _tar_bytes(files: Sequence[ImageFile]) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for f in sorted(files, key=lambda f: f.path):
            info = tarfile.TarInfo(f.path.lstrip("/"))
            info.size = len(f.data)
            info.mode = f.mode
            info.mtime = 0
            tar.addfile(info, io.BytesIO(f.data))
    return buf.getvalue()


def _add(tar: tarfile.TarFile, name: str, data: bytes) -> None:
    info = tarfile.TarInfo(name)
    info.size = len(data)
    info.mode = 0o644
    info.mtime = 0
    tar.addfile(info, io.BytesIO(data))


def _digest(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def write_image(
    dest: Path,
    name: str,
    files: Sequence[ImageFile],
    *,
    entrypoint: Sequence[str],
    cmd: Sequence[str] = (),
    user: str = "65532:65532",
    env: Mapping[str, str] | None = None,
) -> str:
    """Write the image `name` (`registry/repository:tag`) to `dest`; return its manifest digest."""
    layer = _tar_bytes(files)
    config = {
        "architecture": "amd64",
        "os": "linux",
        "config": {
            "Entrypoint": list(entrypoint),
            "Cmd": list(cmd),
            "User": user,
            "Env": [f"{k}={v}" for k, v in (env or {}).items()],
            "WorkingDir": "/",
        },
        "rootfs": {"type": "layers", "diff_ids": [_digest(layer)]},
        "history": [{"created_by": "e2e/image_archive.py"}],
    }
    config_bytes = json.dumps(config, sort_keys=True).encode()
    manifest = {
        "schemaVersion": 2,
        "mediaType": OCI_MANIFEST,
        "config": {
            "mediaType": OCI_CONFIG,
            "digest": _digest(config_bytes),
            "size": len(config_bytes),
        },
        "layers": [{"mediaType": OCI_LAYER, "digest": _digest(layer), "size": len(layer)}],
    }
    manifest_bytes = json.dumps(manifest, sort_keys=True).encode()
    tag = name.rsplit(":", 1)[1] if ":" in name.rsplit("/", 1)[-1] else "latest"
    index = {
        "schemaVersion": 2,
        "manifests": [
            {
                "mediaType": OCI_MANIFEST,
                "digest": _digest(manifest_bytes),
                "size": len(manifest_bytes),
                "annotations": {
                    "io.containerd.image.name": name,
                    "org.opencontainers.image.ref.name": tag,
                },
            }
        ],
    }
    blob = "blobs/sha256/"
    docker_manifest = [
        {
            "Config": blob + _digest(config_bytes).split(":")[1],
            "RepoTags": [name],
            "Layers": [blob + _digest(layer).split(":")[1]],
        }
    ]
    dest.parent.mkdir(parents=True, exist_ok=True)
    with tarfile.open(dest, mode="w", format=tarfile.PAX_FORMAT) as tar:
        _add(tar, "oci-layout", json.dumps({"imageLayoutVersion": "1.0.0"}).encode())
        for data in (layer, config_bytes, manifest_bytes):
            _add(tar, blob + _digest(data).split(":")[1], data)
        _add(tar, "index.json", json.dumps(index, sort_keys=True).encode())
        _add(tar, "manifest.json", json.dumps(docker_manifest).encode())
    return _digest(manifest_bytes)
