"""Trained model artifacts on disk: one directory per model name and version.

Layout: ``<model_dir>/<name>/<version>/model.pkl`` (the pickled estimator together with its
metadata, so the artifact itself records its version), ``scorer.npz`` (the estimator compiled
for serving, plain arrays: scoring.py; absent for an estimator without a compiled form) and
``metadata.json`` (the same metadata, readable; written last, so its presence marks a complete
artifact).
"""

from __future__ import annotations

import io
import json
import os
import pickle
import re
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from mlstack_model import scoring

MODEL_FILE = "model.pkl"
SCORER_FILE = "scorer.npz"
METADATA_FILE = "metadata.json"
_VERSION_RE = re.compile(r"^v(\d+)$")


@dataclass(frozen=True)
class ArtifactMetadata:
    name: str
    version: str
    estimator: str
    dataset: str
    feature_names: list[str]
    class_labels: list[int]
    class_names: list[str]
    sklearn_version: str
    holdout_accuracy: float

    @property
    def n_features(self) -> int:
        return len(self.feature_names)

    @classmethod
    def from_dict(cls, raw: dict[str, Any]) -> ArtifactMetadata:
        return cls(
            name=str(raw["name"]),
            version=str(raw["version"]),
            estimator=str(raw["estimator"]),
            dataset=str(raw["dataset"]),
            feature_names=[str(f) for f in raw["feature_names"]],
            class_labels=[int(c) for c in raw["class_labels"]],
            class_names=[str(c) for c in raw["class_names"]],
            sklearn_version=str(raw["sklearn_version"]),
            holdout_accuracy=float(raw["holdout_accuracy"]),
        )


@dataclass(frozen=True)
class Artifact:
    metadata: ArtifactMetadata
    estimator: Any


def version_key(version: str) -> int:
    match = _VERSION_RE.match(version)
    if match is None:
        raise ValueError(f"model version must look like v1, v2, ...; got {version!r}")
    return int(match.group(1))


def artifact_dir(model_dir: Path, name: str, version: str) -> Path:
    return model_dir / name / version


def available_versions(model_dir: Path, name: str) -> list[str]:
    """Complete artifact versions for ``name``, oldest first."""
    root = model_dir / name
    if not root.is_dir():
        return []
    versions = [
        entry.name
        for entry in root.iterdir()
        if _VERSION_RE.match(entry.name) and (entry / METADATA_FILE).is_file()
    ]
    return sorted(versions, key=version_key)


def read_metadata(model_dir: Path, name: str, version: str) -> ArtifactMetadata:
    path = artifact_dir(model_dir, name, version) / METADATA_FILE
    with path.open("rb") as handle:
        metadata = ArtifactMetadata.from_dict(json.load(handle))
    _check_identity(path, metadata, name, version)
    return metadata


def _check_identity(path: Path, metadata: ArtifactMetadata, name: str, version: str) -> None:
    if (metadata.name, metadata.version) != (name, version):
        raise ValueError(
            f"{path} holds {metadata.name} {metadata.version}, expected {name} {version}"
        )


def _write_atomically(path: Path, data: bytes) -> None:
    # Several processes may train into one cache dir at once: each writes its own temporary
    # file and renames it into place, so a reader never sees a half-written file.
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    with tmp.open("wb") as handle:
        handle.write(data)
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(tmp, path)


def save(model_dir: Path, artifact: Artifact) -> Path:
    meta = artifact.metadata
    target = artifact_dir(model_dir, meta.name, meta.version)
    target.mkdir(parents=True, exist_ok=True)
    payload = {"metadata": asdict(meta), "estimator": artifact.estimator}
    _write_atomically(target / MODEL_FILE, pickle.dumps(payload, protocol=5))
    compiled = scoring.compile_scorer(artifact.estimator)
    if compiled is None:
        (target / SCORER_FILE).unlink(missing_ok=True)
    else:
        buffer = io.BytesIO()
        arrays: dict[str, Any] = scoring.stored(compiled)
        np.savez(buffer, allow_pickle=False, **arrays)
        _write_atomically(target / SCORER_FILE, buffer.getvalue())
    text = json.dumps(asdict(meta), indent=2, sort_keys=True) + "\n"
    _write_atomically(target / METADATA_FILE, text.encode())
    return target


def load(model_dir: Path, name: str, version: str) -> Artifact:
    """Load one artifact. Only ever point this at a trusted directory: it unpickles."""
    path = artifact_dir(model_dir, name, version) / MODEL_FILE
    with path.open("rb") as handle:
        payload = pickle.load(handle)
    metadata = ArtifactMetadata.from_dict(payload["metadata"])
    _check_identity(path, metadata, name, version)
    return Artifact(metadata=metadata, estimator=payload["estimator"])


def has_scorer(model_dir: Path, name: str, version: str) -> bool:
    return (artifact_dir(model_dir, name, version) / SCORER_FILE).is_file()


def load_scorer(
    model_dir: Path, name: str, version: str
) -> scoring.LinearScorer | scoring.TreeScorer:
    """The artifact's compiled scorer: arrays only, nothing unpickled, no scikit-learn."""
    with np.load(
        artifact_dir(model_dir, name, version) / SCORER_FILE, allow_pickle=False
    ) as arrays:
        return scoring.from_stored(arrays)
