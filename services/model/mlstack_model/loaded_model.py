"""The one model version this server process serves, loaded and compiled once at start-up."""

from __future__ import annotations

import logging
from dataclasses import dataclass

import orjson

from mlstack_model import artifacts, train
from mlstack_model.metadata import model_metadata
from mlstack_model.scoring import EstimatorScorer, Scorer
from mlstack_model.settings import ModelSettings

log = logging.getLogger("mlstack_model")


@dataclass(frozen=True)
class LoadedModel:
    metadata: artifacts.ArtifactMetadata
    scorer: Scorer
    # Answers that never change, serialized once.
    metadata_body: bytes
    ready_body: bytes

    @property
    def name(self) -> str:
        return self.metadata.name

    @property
    def version(self) -> str:
        return self.metadata.version


class ModelNotAvailableError(RuntimeError):
    pass


def load_model(settings: ModelSettings) -> LoadedModel:
    """Load MODEL_NAME at MODEL_VERSION (default: newest), training it first if it is missing."""
    name, model_dir = settings.model_name, settings.model_dir
    try:
        train.ensure_trained(model_dir, name)
    except OSError as exc:
        # A read-only MODEL_DIR without artifacts (e.g. an image built without training).
        raise ModelNotAvailableError(f"cannot train {name} into {model_dir}: {exc}") from exc
    versions = artifacts.available_versions(model_dir, name)
    if not versions:
        raise ModelNotAvailableError(f"no trained artifacts for model {name!r} in {model_dir}")
    version = settings.model_version or versions[-1]
    if version not in versions:
        raise ModelNotAvailableError(
            f"MODEL_VERSION={version!r} not found for {name!r} in {model_dir}; "
            f"available: {', '.join(versions)}"
        )
    metadata = artifacts.read_metadata(model_dir, name, version)
    scorer: Scorer
    if artifacts.has_scorer(model_dir, name, version):
        scorer = artifacts.load_scorer(model_dir, name, version)
    else:
        # No compiled form: the pickle, and scikit-learn's own methods.
        scorer = EstimatorScorer(artifacts.load(model_dir, name, version).estimator)
    log.info(
        "serving %s %s (%s, %s) from %s",
        name, version, metadata.estimator, type(scorer).__name__, model_dir,
    )  # fmt: skip
    return LoadedModel(
        metadata=metadata,
        scorer=scorer,
        metadata_body=orjson.dumps(model_metadata(metadata)),
        ready_body=orjson.dumps({"name": name, "ready": True}),
    )
